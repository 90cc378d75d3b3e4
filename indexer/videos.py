"""The video stage: a video file becomes object tracks and keyframes, ready for the writer.

Frames are sampled at ``video_fps`` and streamed (``segsearch.video.sample_frames``): each one goes
through SAM's automatic masks, its crops through CLIP, and its masks into the ``Tracker``; every
``video_keyframe_seconds`` the whole frame is embedded too. Nothing holds more than the current
frame, so memory does not grow with the video's length. The result is a ``Prepared`` like a
photo's, with its vectors already computed: the writer stores it under the same protocol (pending
until vectors and rows are durable).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segsearch.crops import cut_crop, whole_image
from segsearch.identity import segment_id
from segsearch.images import check_sam_view
from segsearch.masks import MaskSet
from segsearch.store.schema import SegmentRecord, TrackFrameRow
from segsearch.video import VIDEO_MAX_SIDE, VideoInfo, sample_frames

from segsearch.indexer.amg import mask_generator_for, release_freed_memory
from segsearch.indexer.propagate import (
    BACKGROUND,
    TRACK_EMBED_SECONDS,
    Keyframes,
    Propagator,
    changed_cells,
    match_motion,
    new_objects,
    unchanged,
)
from segsearch.indexer.tracks import Track, Tracker
from segsearch.indexer.writer import Prepared

log = logging.getLogger(__name__)

# Sampled frames between two returns of freed heap to the OS: memory flat with a video's length
# (4-minute clip: peak 1,256 -> 1,145 MiB; every 20 frames cost ~10% more time, every 120 ~5%)
TRIM_EVERY = 120

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
    carry = Carrier(models.sam, tracker, s) if s.video_tracking == "propagate" else None
    for sampled, frame in enumerate(frames, start=1):
        t1 = time.perf_counter()
        ix.times.add("video_decode", t1 - t_decode)
        if models.guard is not None:
            models.guard()
        if carry is None:  # automatic masks on every sampled frame, linked afterwards
            masks = mask_generator.generate(frame.rgb)
            masks = masks.filter(masks.areas >= max(s.min_segment_area, 1))
        else:  # live tracks carried; automatic masks only on keyframes, for what is new
            masks = carry.frame(frame.t, frame.rgb, mask_generator)
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
            for i in (range(len(masks)) if carry is None else carry.to_embed())
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
        if carry is None:
            tracker.step(frame.t, masks, vecs[: len(masks)])
        else:
            carry.commit(frame.t, vecs[: len(crops) - key])
        if key:
            keyframes.append((frame.t, vecs[-1].copy()))  # not a view keeping the frame's vectors
        if sampled % TRIM_EVERY == 0:
            release_freed_memory()
        t_decode = time.perf_counter()
    if carry is not None:
        log.debug("%s: new objects looked for per frame: %s", path.name, carry.keys.counts)
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


class Carrier:
    """Propagation for one video (indexer/propagate.py): per sampled frame, the live tracks'
    carried masks, plus new objects where the picture changed (prompts there, or automatic masks
    on keyframes); ``commit`` then hands both to the tracker with their crops' vectors."""

    def __init__(self, sam, tracker: Tracker, s):
        from segsearch.models import amg_params

        self.tracker, self.min_area, self.step_s = tracker, max(s.min_segment_area, 1), 1.0 / s.video_fps
        params = amg_params(s)
        self.thresholds = (params["pred_iou_thresh"], params["stability_score_thresh"])
        self.prop = Propagator(sam)
        self.keys = Keyframes(s.video_refresh_seconds)
        self.carried: list[Track] = []  # tracks the frame's first masks continue
        self.held: list[Track] = []  # tracks that did not move: they keep their last mask and vector
        self.embed: list[int] = []  # rows of ``masks`` whose crops are embedded (``to_embed``)
        self.t = 0.0
        self.n_carried = 0
        self.masks: MaskSet | None = None
        self.prev_rgb: np.ndarray | None = None  # the last sample at the tracker's resolution

    def frame(self, t: float, rgb: np.ndarray, mask_generator) -> MaskSet:
        """The masks to cut and embed on this frame: the moving tracks' carried masks first, then
        new objects' (still tracks are held without a mask: ``commit``)."""
        tr = self.tracker
        tr.expire(t)
        h, w = rgb.shape[:2]
        small_rgb = rgb[:: tr.stride, :: tr.stride]
        # tracks seen at the previous sample are carried; those lost earlier wait to be found again
        live = [k for k in tr.open if t - k.end_s <= 1.5 * self.step_s]
        # an object whose cells (and their neighbours) did not change is where it was: its mask
        # is kept without SAM; the rest are carried by prompts
        diff = None if self.prev_rgb is None else changed_cells(self.prev_rgb, small_rgb)
        still = [k for k in live if diff is not None and k.last.area < BACKGROUND * h * w and unchanged(diff, k.low)]
        moving = [k for k in live if not any(k is c for c in still)]
        carried, idx = MaskSet.empty(h, w), []
        if moving:
            shifts = [
                tr.motion(k, t)
                if self.prev_rgb is None or k.last.area >= BACKGROUND * h * w
                else match_motion(self.prev_rgb, small_rgb, k.low, tr.motion(k, t))
                for k in moving
            ]
            carried, idx = self.prop.carry(rgb, [k.low for k in moving], shifts, tr.stride)
            big = carried.areas >= self.min_area
            carried, idx = carried.filter(big), [i for i, b in zip(idx, big) if b]
        # still tracks are held as they were (``commit``): no mask to cut, no crop to embed again
        self.held, self.carried = still, [moving[i] for i in idx]
        low = carried.masks[:, :: tr.stride, :: tr.stride]
        lows = [k.low for k in still] + [low[i] for i in range(len(carried)) if carried.areas[i] < BACKGROUND * h * w]
        tracked = np.any(lows, axis=0) if lows else np.zeros(small_rgb.shape[:2], bool)
        how, cells = self.keys.plan(t, diff, tracked)
        masks = carried
        if how == "auto":
            new = mask_generator.generate(rgb)
        elif how == "prompts":
            new = self.prop.discover(rgb, cells, tr.stride, self.thresholds)
        if how != "none":
            covering = np.stack([k.low for k in still] + list(low)) if still or len(carried) else None
            new = new_objects(new.filter(new.areas >= self.min_area), covering, tr.stride)
            masks = MaskSet.cat([carried, new])
        self.n_carried, self.masks, self.prev_rgb, self.t = len(carried), masks, small_rgb, t
        return masks

    def to_embed(self) -> list[int]:
        """Rows of this frame's masks whose crops are embedded: every new object's, and a carried
        track's when its last embedded crop is ``TRACK_EMBED_SECONDS`` old (its vector is a mean
        over its crops, and its appearance changes slowly; a new mask needs its vector to be matched
        to a lost track)."""
        n = self.n_carried
        due = [i for i, k in enumerate(self.carried) if self.t - k.embedded_s >= TRACK_EMBED_SECONDS - 1e-6]
        self.embed = due + list(range(n, len(self.masks)))
        return self.embed

    def commit(self, t: float, vectors: np.ndarray) -> None:
        """Hand the frame to the tracker; ``vectors``: the crops' of ``to_embed``'s rows, in order."""
        n, masks = self.n_carried, self.masks
        full = [None] * len(masks)
        for row, v in zip(self.embed, vectors):
            full[row] = v
        self.tracker.hold(t, self.held)
        if n:
            self.tracker.carry(t, masks.filter(np.arange(n)), full[:n], self.carried)
        if len(masks) > n:
            self.tracker.step(t, masks.filter(np.arange(n, len(masks))), np.stack(full[n:]))


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
