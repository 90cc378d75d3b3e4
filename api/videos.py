"""Video routes: a video's tracks (``GET /v1/videos/{id}``) and a track's span as a clip with its
mask drawn (``GET /v1/segments/{id}/clip.mp4``). Crops and overlays of tracks come from their best
frame through the segment routes like any segment's."""

from __future__ import annotations

import os

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from segsearch import render
from segsearch.errors import ImageError
from segsearch.paths import on_disk
from segsearch.store.tracks import track_frames, video_segments

from segsearch.api import schemas
from segsearch.api.deps import ServicesDep, require_read
from segsearch.api.errors import ProblemError
from segsearch.api.routes import NOT_FOUND, get_segment_row

router = APIRouter(prefix="/v1", dependencies=[Depends(require_read)])


@router.get("/videos/{video_id}", response_model=schemas.Video, responses=NOT_FOUND)
def get_video(video_id: str, services: ServicesDep):
    """A video's object tracks (each with its box on every sampled frame) and keyframes."""
    img = services.catalog.get_image(video_id)
    if img is None or img.media != "video":
        raise ProblemError(404, "Video not found", f"no video with id {video_id!r}")
    tracks, keyframes = video_segments(services.catalog, video_id)
    frames = track_frames(services.catalog, [r.id for r in tracks])
    return schemas.Video(
        video_id=img.id,
        paths=services.catalog.image_paths(video_id),
        width=img.width,
        height=img.height,
        duration_s=img.duration_s,
        format=img.format,
        status=img.status,
        error=img.error,
        tracks=[
            schemas.Track(
                segment_id=r.id,
                start_s=r.start_s,
                end_s=r.end_s,
                best_s=r.best_s,
                bbox=r.bbox,
                area_frac=r.area_frac,
                frames=[schemas.TrackFrame(t=f.t, bbox=f.bbox) for f in frames[r.id]],
                urls=schemas.Links.of(r.id, r.image_id, r.kind),
            )
            for r in tracks
        ],
        keyframes=[
            schemas.Keyframe(segment_id=r.id, t=r.start_s, urls=schemas.Links.of(r.id, r.image_id, r.kind))
            for r in keyframes
        ],
    )


@router.get("/segments/{segment_id}/clip.mp4", response_class=Response, responses=NOT_FOUND)
def track_clip(segment_id: str, services: ServicesDep):
    """The track's span (at most 30 s, 640 px, 10 frames/s) as H.264 MP4, its mask drawn."""
    row = get_segment_row(services, segment_id)
    if row.kind != "track":
        raise ProblemError(404, "Not a track", "only video tracks have a clip")
    cached = services.renders.get((segment_id, "clip"))
    if cached is None:
        frames = [(f.t, f.rle) for f in track_frames(services.catalog, [segment_id])[segment_id]]
        with services.work.slot():
            cached = _clip(services, row, frames)
        services.renders.put((segment_id, "clip"), cached)
    return Response(cached, media_type="video/mp4", headers={"Cache-Control": "private, max-age=3600"})


def _clip(services, row, frames) -> bytes:
    for path in map(on_disk, services.catalog.image_paths(row.image_id)):
        try:
            os.stat(path)
            return render.track_clip(path, row.start_s, row.end_s, frames)
        except (OSError, ImageError):
            continue
    raise ProblemError(404, "Source video unavailable", "the indexed file was moved, deleted or changed")
