"""Alembic migrations of the session database (``Store`` runs them at start; no alembic.ini).

A new database is created from the current models and stamped at the newest revision; a
database Loupe wrote before Alembic (schema version 1) is stamped ``0001`` and upgraded.
A new revision: a module in ``versions/`` with ``revision`` / ``down_revision`` and an
``upgrade()`` written with ``op`` (batch mode, so SQLite can alter tables too).
"""
