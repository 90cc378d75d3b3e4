"""Crops, masks and overlays rendered from a segment's stored RLE and its source image."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

from segsearch.crops import cut_crop, square_box
from segsearch.images import decode_image
from segsearch.masks import decode_rle

DIM = 0.35  # what is not the segment keeps 35% of its brightness
OUTLINE = np.array([255, 255, 255], np.float32)


@lru_cache(maxsize=8)
def source_rgb(path: str, max_pixels: int, _mtime_ns: int, max_bytes: int) -> np.ndarray:
    from segsearch.errors import ImageError

    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)  # a file swapped for a huge one since it was indexed is not read whole
    if len(data) > max_bytes:
        raise ImageError(f"the file is over {max_bytes:,} bytes now (SEGSEARCH_MAX_IMAGE_BYTES)")
    return decode_image(data, max_pixels=max_pixels).rgb


def video_frame(path: str, t: float, _mtime_ns: int, deadline: float | None = None) -> np.ndarray:
    """A video's frame at ``t``, the size the indexer sampled it at (its masks' size); decoding
    stops at ``deadline`` (``time.monotonic()``) with a ``VideoTimeout``."""
    from segsearch.video import frame_at

    return frame_at(path, t, deadline=deadline)


def track_clip(path: str, start_s: float, end_s: float, frames: list[tuple[float, dict]]) -> bytes:
    """A track's span as H.264 MP4, its mask drawn on every frame within one sampling step of a
    tracked one, at most ``CLIP_MAX_SECONDS`` long and ``CLIP_MAX_SIDE`` wide (bounded cost)."""
    import bisect

    import cv2

    from segsearch.video import CLIP_FPS, CLIP_MAX_SECONDS, CLIP_MAX_SIDE, encode_mp4, sample_frames

    times = [t for t, _ in frames]
    step = max((b - a for a, b in zip(times, times[1:])), default=1.0)
    end = min(end_s, start_s + CLIP_MAX_SECONDS)
    layers: dict[int, tuple] = {}  # the current observation's mask and outline, at the clip's size

    def overlaid():
        # frames decoded straight to the clip's size; each tracked mask scaled and outlined once
        # for the several clip frames it covers (10 frames/s against 2 samples/s)
        for f in sample_frames(path, CLIP_FPS, start_s=start_s, max_side=CLIP_MAX_SIDE):
            if f.t > end + step / 2:
                return
            k = bisect.bisect_left(times, f.t)
            near = min((i for i in (k - 1, k) if 0 <= i < len(times)), key=lambda i: abs(times[i] - f.t))
            if abs(times[near] - f.t) > step:
                yield f.rgb
                continue
            if near not in layers:
                m = decode_rle(frames[near][1])
                if m.shape != f.rgb.shape[:2]:
                    m = cv2.resize(m.view(np.uint8), f.rgb.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
                layers.clear()
                layers[near] = (m, *outline(m))
            yield dimmed(f.rgb, *layers[near])

    return encode_mp4(overlaid(), CLIP_FPS)


def outline(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bright line just outside a mask (2 px) and a black edge outside that (2 px more)."""
    import cv2

    grown = cv2.dilate(m.view(np.uint8), np.ones((5, 5), np.uint8)) > 0
    edge = (cv2.dilate(m.view(np.uint8), np.ones((9, 9), np.uint8)) > 0) & ~grown
    return grown & ~m, edge


def dimmed(rgb: np.ndarray, m: np.ndarray, line: np.ndarray, edge: np.ndarray) -> np.ndarray:
    im = rgb.astype(np.float32)
    im[~m] *= DIM
    im[line] = OUTLINE  # the line reads on dark photos...
    im[edge] = 0  # ...its black edge on light ones
    return np.clip(im, 0, 255).astype(np.uint8)


def mask_png(rle: dict) -> bytes:
    m = decode_rle(rle)
    return _encode(Image.fromarray((m * 255).astype(np.uint8), "L"), "PNG")


def crop_jpeg(rgb: np.ndarray, rle: dict | None, bbox, padding: float = 0.1, max_side: int = 384) -> bytes:
    """What a person wants to see: the indexer's crop window, outside the mask dimmed (not erased)."""
    side = square_box(bbox, padding, rgb.shape[1], rgb.shape[0])[2]
    mask = decode_rle(rle) if rle is not None else None
    return _encode(cut_crop(rgb, mask, bbox, mode="dim", padding=padding, size=min(side, max_side)), "JPEG")


def overlay(rgb: np.ndarray, rle: dict | None, max_side: int = 1600) -> Image.Image:
    """The source image with the segment outlined and the rest dimmed. The segment's own pixels
    are left exactly as they are: a tint would change its colour (a blue star under a pink
    highlight looks purple), which misleads a colour search."""
    if rle is not None:
        m = decode_rle(rle)
        out = Image.fromarray(dimmed(rgb, m, *outline(m)))
    else:
        out = Image.fromarray(rgb)
    if max(out.size) > max_side:
        out.thumbnail((max_side, max_side))
    return out


def overlay_jpeg(rgb: np.ndarray, rle: dict | None) -> bytes:
    return _encode(overlay(rgb, rle), "JPEG")


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    return buf.getvalue()
