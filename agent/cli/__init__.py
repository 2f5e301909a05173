"""The ``loupe`` command line: one module per command, dispatched by ``agent.cli.main``."""
