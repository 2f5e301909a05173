"""The schema Loupe created before it used Alembic (schema version 1): sessions, studies,
history, events, images, tool calls, findings, report versions, second reads, audit."""

from __future__ import annotations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to do: such databases were made by ``create_all`` and are stamped here."""


def downgrade() -> None:
    raise NotImplementedError("Loupe does not downgrade session databases.")
