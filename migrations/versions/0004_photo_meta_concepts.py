"""photo metadata (EXIF capture time, camera, GPS) on images; concepts and the tags they give segments

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Read from EXIF at index time; absent when the photo has none (images indexed before this
    # revision have none until they are re-indexed).
    with op.batch_alter_table("images") as b:
        b.add_column(sa.Column("taken_at", TS))
        b.add_column(sa.Column("camera_make", sa.String(128)))
        b.add_column(sa.Column("camera_model", sa.String(128)))
        b.add_column(sa.Column("gps_lat", sa.Float))
        b.add_column(sa.Column("gps_lon", sa.Float))
    # A concept: a linear classifier over CLIP vectors, trained from labelled segments.
    op.create_table(
        "concepts",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("text", sa.Text),
        sa.Column("collection", sa.String(128), nullable=False),
        sa.Column("positives", sa.JSON, nullable=False),
        sa.Column("negatives", sa.JSON, nullable=False),
        sa.Column("model", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    # Which segments a concept matched (also in the vector payload's "tags", which filters use).
    op.create_table(
        "segment_tags",
        sa.Column("segment_id", sa.String(36), primary_key=True),
        sa.Column("concept", sa.String(64), sa.ForeignKey("concepts.name", ondelete="CASCADE"), primary_key=True),
        sa.Column(
            "image_id", sa.String(64), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column("score", sa.Float, nullable=False),
    )
    op.create_index("ix_segment_tags_concept", "segment_tags", ["concept"])


def downgrade() -> None:
    op.drop_index("ix_segment_tags_concept", "segment_tags")
    op.drop_table("segment_tags")
    op.drop_table("concepts")
    with op.batch_alter_table("images") as b:
        for c in ("gps_lon", "gps_lat", "camera_model", "camera_make", "taken_at"):
            b.drop_column(c)
