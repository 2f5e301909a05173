"""``python -m agent.cli``: the same as the ``loupe`` command."""

from agent.cli.main import main

main()
