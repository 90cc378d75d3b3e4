"""library: the models and settings a data directory was indexed with; jobs: index jobs of a server

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # One row per key ("sam", "clip", "amg", "crop"): recorded at the first index, read by every
    # command that is given no model flags, replaced only by an explicit `index --reindex`.
    op.create_table(
        "library",
        sa.Column("key", sa.String(32), primary_key=True),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    # Index jobs handed to a running server (`segsearch index` while `segsearch serve` holds the
    # store, or POST /v1/jobs/index). Kept in SQL so a job queued or running when the server stops
    # is picked up again when it starts.
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("progress", sa.JSON),
        sa.Column("summary", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
    )


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("library")
