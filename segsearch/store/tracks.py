"""A video's tracks and their frames, read from the catalog (rows written by the video stage)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from segsearch.store.schema import SegmentRow, TrackFrameRow


def track_frames(catalog, segment_ids: Iterable[str]) -> dict[str, list[TrackFrameRow]]:
    """Each track's sampled frames, in time order."""
    ids = list(segment_ids)
    out: dict[str, list[TrackFrameRow]] = {i: [] for i in ids}
    if not ids:
        return out
    with catalog.Session() as s:
        q = select(TrackFrameRow).where(TrackFrameRow.segment_id.in_(ids)).order_by(TrackFrameRow.t)
        for r in s.scalars(q):
            out[r.segment_id].append(r)
    return out


def video_segments(catalog, image_id: str) -> tuple[list[SegmentRow], list[SegmentRow]]:
    """A video's tracks (by start time) and keyframes (by time)."""
    with catalog.Session() as s:
        rows = list(s.scalars(select(SegmentRow).where(SegmentRow.image_id == image_id)))
    tracks = sorted((r for r in rows if r.kind == "track"), key=lambda r: (r.start_s or 0.0, r.mask_index))
    frames = sorted((r for r in rows if r.kind == "frame"), key=lambda r: r.start_s or 0.0)
    return tracks, frames
