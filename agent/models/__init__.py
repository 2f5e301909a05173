"""Model backends: Gemini (the only google-genai user) and the offline planner, chosen by
``agent.models.factory``; each implements ``agent.conversation.Backend``."""
