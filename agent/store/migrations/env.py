"""Alembic's environment: migrate over the connection ``Store`` hands in (no URL, no ini file)."""

from __future__ import annotations

from alembic import context

from agent.store.database import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
