"""Pre-read: the job ledger (one row per study, instance count and analysis version)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "preread_jobs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("findings", sa.Integer(), nullable=True),
        sa.Column("anomaly_found", sa.Boolean(), nullable=True),
        sa.Column("top_finding", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.UniqueConstraint("study_uid", "instances", "version", name="uq_preread_job_key"),
    )
    op.create_index("ix_preread_jobs_study_uid", "preread_jobs", ["study_uid"])
    op.create_index("ix_preread_jobs_state", "preread_jobs", ["state"])


def downgrade() -> None:
    raise NotImplementedError("Loupe does not downgrade session databases.")
