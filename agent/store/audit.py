"""The audit trail as JSON lines: who, when, which session, what was sent to which model (sizes,
hashes, prompt version, token usage), which tools ran with what, report changes and sign-offs.

Entries are appended by the conversation as it runs (``SessionRecorder.audit``) and never
changed. They hold no API key and no patient data: model requests are described by sizes and
SHA-256 hashes, file paths in tool arguments are hashed.
"""

from __future__ import annotations

import json

from agent.store.database import Store


def export_jsonl(store: Store, session_id: str | None = None, actor: str | None = None) -> str:
    """The trail as JSON lines; only ``actor``'s own entries when given (what a user may read)."""
    lines = []
    for row in store.audit_rows(session_id, actor):
        lines.append(json.dumps({"id": row.id, "at": row.at.isoformat(), "actor": row.actor,
                                 "session_id": row.session_id, "action": row.action, "detail": row.detail},
                                sort_keys=True, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)
