"""images, image_paths, segments, runs

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("format", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("fingerprint", sa.String(128)),
        sa.Column("collection", sa.String(128)),
        sa.Column("n_segments", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("indexed_at", TS),
    )
    op.create_index("ix_images_status", "images", ["status"])
    op.create_table(
        "image_paths",
        sa.Column("path", sa.String(4096), primary_key=True),
        sa.Column("image_id", sa.String(64), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("seen_at", TS, nullable=False),
    )
    op.create_index("ix_image_paths_image_id", "image_paths", ["image_id"])
    op.create_table(
        "segments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("image_id", sa.String(64), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("collection", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("mask_index", sa.Integer, nullable=False),
        sa.Column("x", sa.Integer, nullable=False),
        sa.Column("y", sa.Integer, nullable=False),
        sa.Column("w", sa.Integer, nullable=False),
        sa.Column("h", sa.Integer, nullable=False),
        sa.Column("area", sa.BigInteger, nullable=False),
        sa.Column("area_frac", sa.Float, nullable=False),
        sa.Column("predicted_iou", sa.Float),
        sa.Column("stability_score", sa.Float),
        sa.Column("rle", sa.JSON),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_segments_image_id", "segments", ["image_id"])
    op.create_index("ix_segments_collection", "segments", ["collection"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("indexed", sa.Integer, nullable=False),
        sa.Column("skipped", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("segments", sa.Integer, nullable=False),
        sa.Column("failures", sa.JSON),
    )


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("segments")
    op.drop_table("image_paths")
    op.drop_table("images")
