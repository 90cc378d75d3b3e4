"""videos: media kind and length on images, a track's span on segments, a track's frames

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # "video" for video files; NULL (rows from before) and "photo" are photos
    with op.batch_alter_table("images") as b:
        b.add_column(sa.Column("media", sa.String(16)))
        b.add_column(sa.Column("duration_s", sa.Float))
    # A track's span and best frame; a keyframe's time (NULL for photo segments)
    with op.batch_alter_table("segments") as b:
        b.add_column(sa.Column("start_s", sa.Float))
        b.add_column(sa.Column("end_s", sa.Float))
        b.add_column(sa.Column("best_s", sa.Float))
    # A track's box and mask on every sampled frame
    op.create_table(
        "track_frames",
        sa.Column("segment_id", sa.String(36), primary_key=True),
        sa.Column("t", sa.Float, primary_key=True),
        sa.Column(
            "image_id", sa.String(64), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column("x", sa.Integer, nullable=False),
        sa.Column("y", sa.Integer, nullable=False),
        sa.Column("w", sa.Integer, nullable=False),
        sa.Column("h", sa.Integer, nullable=False),
        sa.Column("rle", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("track_frames")
    with op.batch_alter_table("segments") as b:
        for c in ("best_s", "end_s", "start_s"):
            b.drop_column(c)
    with op.batch_alter_table("images") as b:
        for c in ("duration_s", "media"):
            b.drop_column(c)
