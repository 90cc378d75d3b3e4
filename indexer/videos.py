"""The video stage: a video file becomes object tracks and keyframes, ready for the writer.

Frames are sampled at ``video_fps`` and streamed (``segsearch.video.sample_frames``): each one goes
through SAM's automatic masks, its crops through CLIP, and its masks into the ``Tracker``; every
``video_keyframe_seconds`` the whole frame is embedded too. Nothing holds more than the current
frame, so memory does not grow with the video's length. The result is a ``Prepared`` like a
photo's, with its vectors already computed: the writer stores it under the same protocol (pending
until vectors and rows are durable).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segsearch.crops import cut_crop, whole_image
from segsearch.identity import segment_id
from segsearch.images import check_sam_view
from segsearch.store.schema import SegmentRecord, TrackFrameRow
from segsearch.video import VIDEO_MAX_SIDE, VideoInfo, sample_frames

from segsearch.indexer.amg import mask_generator_for
from segsearch.indexer.tracks import Track, Tracker
from segsearch.indexer.writer import Prepared

if TYPE_CHECKING:
    from segsearch.indexer.pipeline import Indexer


def prepare_video(ix: Indexer, path: Path, iid: str, info: VideoInfo) -> Prepared:
    """Steps 1-2 of the protocol for a video: mark pending, then tracks, keyframes and vectors."""
    s, models = ix.settings, ix.models
    t0 = time.perf_counter()
    mask_generator, embedder = mask_generator_for(models), models.embedder
    if time.perf_counter() - t0 > 0.01:
        ix.times.add("load_models", time.perf_counter() - t0)
    check_sam_view(info.width, info.height, int(models.sam_spec.config["image_size"]))
    if models.guard is not None:
        models.guard()
    ix.mark_pending(iid)
    step = 1.0 / s.video_fps
    tracker = Tracker(info.width, info.height, min_track_seconds=s.min_track_seconds, step_s=step)
    keyframes: list[tuple[float, np.ndarray]] = []
    next_key = 0.0
    dim = None
    t_decode = time.perf_counter()
    frames = sample_frames(
        path,
        s.video_fps,
        max_side=VIDEO_MAX_SIDE,
        max_seconds=s.max_video_seconds,
        info=info,
        max_pixels=s.max_image_pixels,
    )
    for frame in frames:
        t1 = time.perf_counter()
        ix.times.add("video_decode", t1 - t_decode)
        if models.guard is not None:
            models.guard()
        masks = mask_generator.generate(frame.rgb)
        masks = masks.filter(masks.areas >= max(s.min_segment_area, 1))
        t2 = time.perf_counter()
        ix.times.add("sam", t2 - t1)
        crops = [
            cut_crop(
                frame.rgb,
                masks.masks[i],
                tuple(masks.boxes[i]),
                mode=s.crop_mode,
                padding=s.crop_padding,
                size=embedder.image_size,
            )
            for i in range(len(masks))
        ]
        key = frame.t + 1e-6 >= next_key
        if key:
            crops.append(whole_image(frame.rgb, size=embedder.image_size))
            while next_key <= frame.t + 1e-6:
                next_key += s.video_keyframe_seconds
        t3 = time.perf_counter()
        ix.times.add("crops", t3 - t2)
        vecs = np.asarray(embedder.embed_images(crops), np.float32) if crops else np.zeros((0, dim or 1), np.float32)
        dim = dim or (vecs.shape[1] if len(vecs) else None)
        ix.times.add("clip", time.perf_counter() - t3)
        tracker.step(frame.t, masks, vecs[: len(masks)])
        if key:
            keyframes.append((frame.t, vecs[-1]))
        t_decode = time.perf_counter()
    if not keyframes:
        from segsearch.video import VideoError

        raise VideoError("the video stream has no decodable frame")
    segments, vectors, rows = video_segments(
        iid, ix.fingerprint(iid), info, tracker.finish(), keyframes, s.track_vector
    )
    return Prepared(
        path,
        iid,
        info.width,
        info.height,
        f"video/{info.codec}",
        segments,
        [],
        vectors=np.stack(vectors),
        fingerprint=ix.fingerprint(iid),
        video=info,
        rows=rows,
    )


def video_segments(
    iid: str, fp: str, info: VideoInfo, tracks: list[Track], keyframes: list[tuple[float, np.ndarray]], how: str
) -> tuple[list[SegmentRecord], list[np.ndarray], list[TrackFrameRow]]:
    """Segment records (tracks first, then keyframes), their vectors, and each track's frames."""
    total = float(info.width * info.height)
    segments, vectors, rows = [], [], []
    for i, tr in enumerate(tracks):
        b = tr.best_obs
        sid = segment_id(iid, fp, i)
        x, y, w, h = b.box
        segments.append(
            SegmentRecord(
                id=sid,
                kind="track",
                mask_index=i,
                x=x,
                y=y,
                w=w,
                h=h,
                area=b.area,
                area_frac=b.area / total,
                predicted_iou=b.predicted_iou,
                stability_score=b.stability_score,
                rle=b.rle,
                start_s=tr.start_s,
                end_s=tr.end_s,
                best_s=b.t,
            )
        )
        vectors.append(tr.vector(how))
        for o in tr.observations:
            ox, oy, ow, oh = o.box
            rows.append(TrackFrameRow(segment_id=sid, t=o.t, image_id=iid, x=ox, y=oy, w=ow, h=oh, rle=o.rle))
    for k, (t, vec) in enumerate(keyframes):
        segments.append(
            SegmentRecord(
                id=segment_id(iid, fp, -1 - k),
                kind="frame",
                mask_index=-1 - k,
                x=0,
                y=0,
                w=info.width,
                h=info.height,
                area=info.width * info.height,
                area_frac=1.0,
                predicted_iou=None,
                stability_score=None,
                rle=None,
                start_s=t,
                end_s=t,
                best_s=t,
            )
        )
        vectors.append(np.asarray(vec, np.float32))
    return segments, vectors, rows
