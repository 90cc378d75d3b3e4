"""Video files: probe, sample frames at a fixed rate, fetch one frame, render a clip.

Decoding uses PyAV (FFmpeg in its wheels), imported lazily. Memory is bounded by design: frames
are decoded one at a time and handed on as they are sampled, each scaled so its longer side is at
most ``max_side`` (SAM sees 1024 px at most anyway), so a 20-minute video holds the same few frames
as a 20-second one. Rotation metadata (phones record upright video as landscape plus a display
matrix) is applied, so masks and boxes are in the upright frame a person sees; variable frame
rate is handled by sampling on presentation times, not frame counts. Every decoding problem is a
``VideoError`` with a reason: the file fails alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segsearch.errors import ImageError
from segsearch.images import IMAGE_EXTENSIONS

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"})
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS  # what folders are searched for
# Longer side of a sampled frame. SAM resizes every frame to its own input (1024 px for Meta's
# models), so decoding 4K frames at full size would cost 8x the memory for nothing SAM sees; the
# stored boxes and masks are in this frame's pixels (the video row's width/height).
VIDEO_MAX_SIDE = 1024
# A clip rendered for a track hit: at most this long and this wide (bounded cost per request).
CLIP_MAX_SECONDS = 30.0
CLIP_MAX_SIDE = 640
CLIP_FPS = 10
# A frame larger than this (from the header) is refused before any is decoded: 8K is 33 MP, and one
# decoded frame of a forged 60000x60000 header would be 5 GB.
MAX_FRAME_PIXELS = 100_000_000
# Decoded frames allowed per second of video: above any real camera's rate (240 fps slow motion)
# with room, and a bound on what a short, tiny file can cost to decode.
MAX_DECODE_FPS = 480


class VideoError(ImageError):
    """A video that cannot be indexed (corrupt, truncated, no video stream, too long)."""


class VideoTimeout(VideoError):
    """Decoding ran past a request's deadline."""


@dataclass(frozen=True)
class VideoInfo:
    width: int  # of a sampled frame: upright, scaled to at most max_side
    height: int
    duration_s: float
    native_fps: float | None
    codec: str
    rotation: int  # degrees the stored frames are turned to be upright


@dataclass
class Frame:
    t: float  # presentation time in seconds from the start of the video
    rgb: np.ndarray  # (H, W, 3) uint8, upright, at VideoInfo's size


def is_video(path) -> bool:
    return str(path).lower().endswith(tuple(VIDEO_EXTENSIONS))


def _open(path, max_pixels: int = MAX_FRAME_PIXELS):
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"not a readable video: {exc}") from None
    if not container.streams.video:
        container.close()
        raise VideoError("the file has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    # FFmpeg refuses frames above this before allocating them (a header can claim 64x64 and the
    # frames be 16000x16000); the per-frame check in sample_frames says so in words
    stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(max_pixels)}
    return container, stream


def _scaled(w: int, h: int, max_side: int) -> tuple[int, int]:
    s = min(1.0, max_side / max(w, h, 1))
    # even sizes: every pixel format (yuv420p included) converts without a remainder
    return max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000.0
    return None


def probe(path, *, max_side: int = VIDEO_MAX_SIDE, max_pixels: int = MAX_FRAME_PIXELS) -> VideoInfo:
    """What the header says, plus the first frame's rotation and size (opened and closed)."""
    container, stream = _open(path, max_pixels)
    try:
        cw, ch = stream.codec_context.width or 0, stream.codec_context.height or 0
        if cw * ch > max_pixels:
            raise VideoError(f"video frames are {cw}x{ch} = {cw * ch:,} pixels, above the cap of {max_pixels:,}")
        first = _first_frame(container, stream)
        rot = int(getattr(first, "rotation", 0) or 0) % 360
        w, h = (first.height, first.width) if rot in (90, 270) else (first.width, first.height)
        sw, sh = _scaled(w, h, max_side)
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            width=sw,
            height=sh,
            duration_s=float(_duration(container, stream) or 0.0),
            native_fps=float(rate) if rate else None,
            codec=stream.codec_context.name,
            rotation=rot,
        )
    finally:
        container.close()


def _first_frame(container, stream):
    import av

    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise VideoError(f"corrupt video: {exc}") from None
    raise VideoError("the video stream has no decodable frame")


def _upright(frame, rot: int, size: tuple[int, int]) -> np.ndarray:
    """An RGB array of the frame, scaled and turned upright. Scaling happens in FFmpeg's swscale on
    the stored orientation (so 10-bit and odd pixel formats convert in the same step)."""
    w, h = size
    sw, sh = (h, w) if rot in (90, 270) else (w, h)
    rgb = frame.to_ndarray(format="rgb24", width=sw, height=sh)
    # FFmpeg's rotation is the display matrix's angle, counter-clockwise
    k = {0: 0, 90: 1, 180: 2, 270: 3}.get(rot, 0)
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def check_length(info: VideoInfo, max_seconds: float | None) -> None:
    """The length cap, from the header (before any frame is decoded)."""
    if max_seconds is not None and info.duration_s > max_seconds:
        raise VideoError(
            f"video is {info.duration_s:.0f} s long, above the cap of {max_seconds:.0f} s "
            "(SEGSEARCH_MAX_VIDEO_SECONDS; checked from the header, before decoding)"
        )


def sample_frames(
    path,
    fps: float,
    *,
    max_side: int = VIDEO_MAX_SIDE,
    max_seconds: float | None = None,
    start_s: float = 0.0,
    info: VideoInfo | None = None,
    deadline: float | None = None,
    max_pixels: int = MAX_FRAME_PIXELS,
) -> Iterator[Frame]:
    """Frames at ``fps`` samples per second from ``start_s``: at each sampling time, the frame on
    screen then (the last one presented at or before it), each at most once, with its own
    presentation time. Sampling follows presentation times, so variable frame rate is sampled
    evenly; one decoded frame is held back (not converted) to know which is on screen. Raises
    ``VideoError`` on a corrupt or truncated stream, and past ``max_seconds``. ``info``: this file's
    ``probe`` at ``max_side``, when the caller already has it (the file is not probed twice).

    The caps hold against what is decoded, not only the header: every frame's size against
    ``max_pixels`` (FFmpeg's own ``max_pixels`` refuses larger ones before allocating them),
    and at most ``MAX_DECODE_FPS`` decoded frames per second of video (a tiny file cannot buy
    hours of decoding). ``deadline`` (``time.monotonic()``): stop with ``VideoTimeout`` past it."""
    import time

    import av

    info = info or probe(path, max_side=max_side, max_pixels=max_pixels)  # the caller's, if it has one
    check_length(info, max_seconds)
    container, stream = _open(path, max_pixels)
    step, eps = 1.0 / fps, 1e-6
    next_t = start_s
    origin = float((stream.start_time or 0) * stream.time_base)
    shown = None  # (t, frame): the last frame presented at or before next_t

    def out(t, frame) -> Frame:
        return Frame(round(t, 3), _upright(frame, info.rotation, (info.width, info.height)))

    try:
        if start_s > 0:
            container.seek(int(start_s / stream.time_base) + (stream.start_time or 0), stream=stream, backward=True)
        decoded, first_t = 0, None
        for frame in container.decode(stream):
            decoded += 1
            if frame.width * frame.height > max_pixels:
                raise VideoError(
                    f"a frame is {frame.width}x{frame.height} = {frame.width * frame.height:,} pixels, above the "
                    f"cap of {max_pixels:,} (checked on the decoded frame, whatever the header says)"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise VideoTimeout("decoding the video took too long")
            if frame.pts is None:
                continue
            t = float(frame.pts * frame.time_base) - origin
            first_t = t if first_t is None else first_t
            if decoded > MAX_DECODE_FPS * (t - first_t + 1.0):
                raise VideoError(
                    f"over {MAX_DECODE_FPS} frames per second of video ({decoded:,} frames in "
                    f"{t - first_t:.1f} s): not indexed"
                )
            if max_seconds is not None and t > max_seconds:  # the header lied about the length
                raise VideoError(f"video runs past the cap of {max_seconds:.0f} s (SEGSEARCH_MAX_VIDEO_SECONDS)")
            if t > next_t + eps:  # next_t has passed: the frame on screen then was the one held back
                if shown is not None:
                    yield out(*shown)
                    shown = None
                while next_t + eps < t:  # sampling times before this frame showed that one too
                    next_t += step
            if t <= next_t + eps:
                shown = (t, frame)
        if shown is not None and next_t < max(info.duration_s, shown[0]) - eps:  # a sampling time left
            yield out(*shown)
    except av.error.FFmpegError as exc:
        raise VideoError(
            f"corrupt or truncated video, or a frame above the cap of {max_pixels:,} pixels "
            f"(refused before decoding): {exc}"
        ) from None
    finally:
        container.close()


def frame_at(path, t: float, *, max_side: int = VIDEO_MAX_SIDE, deadline: float | None = None) -> np.ndarray:
    """The frame shown at ``t`` seconds, as sampled by ``sample_frames`` (same size, upright)."""
    for frame in sample_frames(path, 1000.0, max_side=max_side, start_s=max(0.0, t), deadline=deadline):
        return frame.rgb
    raise VideoError(f"no frame at {t:.2f} s")


def encode_mp4(frames: Iterator[np.ndarray], fps: int = CLIP_FPS) -> bytes:
    """H.264 (yuv420p, index first so playback starts at once): what every browser plays. Written
    to a temporary file (moving the index to the front re-reads the file), returned as bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="segsearch-clip-") as tmp:
        path = Path(tmp) / "clip.mp4"
        _encode_to(str(path), frames, fps)
        return path.read_bytes()


def _encode_to(path: str, frames: Iterator[np.ndarray], fps: int) -> None:
    import av

    with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = None
        for rgb in frames:
            rgb = np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])  # yuv420p: even sizes
            if stream is None:
                stream = out.add_stream("libx264", rate=fps)
                stream.height, stream.width = rgb.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"preset": "veryfast", "crf": "23"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
