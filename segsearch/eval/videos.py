"""Shapes-world videos: deterministic clips with ground-truth object tracks.

Shapes (the same colours and shapes as the still scenes) enter from an edge or appear, move on
straight paths, pass in front of one another and leave, over a background the camera pans across.
Every object keeps its own colour within a video (two same-coloured shapes touching would be one
blob to any segmenter). Ground truth per object: its visible mask in each frame and the span
during which at least ``VISIBLE_FRAC`` of it is in view.

A video is rendered lazily, frame by frame, so a 20-minute benchmark video costs the memory of one
frame; ``write_mp4`` encodes it with H.264 (what phones record).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segsearch.eval.shapes import COLORS, SHAPES, background, shape_mask

VISIBLE_FRAC = 0.5  # an object is "in view" while at least half of its area is visible
# Each object is planned to live at least this long (an object starting near the end is cut short
# by the end of the clip, so none starts in the last MIN_LIFE seconds).
MIN_LIFE = 2.5
VIDEO_HELDOUT_SEEDS = range(40_000_000, 40_100_000)
VIDEO_VALIDATION_SEEDS = range(50_000_000, 50_100_000)
VIDEO_DEMO_SEEDS = range(60_000_000, 60_100_000)


@dataclass
class MovingShape:
    colour: str
    shape: str
    size: float  # pixels
    angle: float
    spin: float  # radians per second
    t0: float  # enters
    t1: float  # leaves
    p0: tuple[float, float]  # world position at t0 (camera pan not applied)
    p1: tuple[float, float]  # at t1
    rgb: tuple[int, int, int]

    def at(self, t: float) -> tuple[float, float, float]:
        a = (t - self.t0) / max(self.t1 - self.t0, 1e-6)
        return (
            self.p0[0] + a * (self.p1[0] - self.p0[0]),
            self.p0[1] + a * (self.p1[1] - self.p0[1]),
            self.angle + self.spin * (t - self.t0),
        )

    @property
    def label(self) -> tuple[str, str]:
        return self.colour, self.shape


@dataclass
class ShapesVideo:
    seed: int
    width: int
    height: int
    fps: int
    duration_s: float
    objects: list[MovingShape]
    pan: float  # pixels per second the camera moves right
    _bg: np.ndarray = field(repr=False, default=None)

    @property
    def n_frames(self) -> int:
        return int(round(self.duration_s * self.fps))

    def render(self, t: float) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """The frame at ``t`` and each object's visible mask in it (objects not on screen absent)."""
        off = int(round(self.pan * t)) % max(1, self._bg.shape[1] - self.width)
        img = self._bg[:, off : off + self.width].astype(np.float32).copy()
        full: list[tuple[int, np.ndarray]] = []
        for i, o in enumerate(self.objects):
            if not (o.t0 <= t <= o.t1):
                continue
            x, y, a = o.at(t)
            m = shape_mask(o.shape, x - self.pan * t, y, o.size, a, self.width, self.height)
            if m.any():
                full.append((i, m))
                img[m] = o.rgb
        vis: dict[int, np.ndarray] = {}
        for k, (i, m) in enumerate(full):  # drawn in list order: later objects cover earlier ones
            v = m.copy()
            for _, later in full[k + 1 :]:
                v &= ~later
            vis[i] = v
        return img.clip(0, 255).astype(np.uint8), vis

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        for k in range(self.n_frames):
            t = k / self.fps
            yield t, self.render(t)[0]

    def full_area(self, i: int) -> float:
        o = self.objects[i]
        return float(
            shape_mask(o.shape, self.width / 2, self.height / 2, o.size, o.angle, self.width, self.height).sum()
        )

    def truth(self, times) -> list[dict]:
        """Ground-truth tracks at the given times: per object its label, span and visible masks."""
        out = {i: {"label": o.label, "masks": {}, "times": []} for i, o in enumerate(self.objects)}
        areas = {i: self.full_area(i) for i in out}
        for t in times:
            _, vis = self.render(t)
            for i, m in vis.items():
                if m.sum() >= VISIBLE_FRAC * areas[i]:
                    out[i]["masks"][t] = m
                    out[i]["times"].append(t)
        tracks = []
        for i, d in out.items():
            if d["times"]:
                tracks.append(
                    {
                        "object": i,
                        "label": d["label"],
                        "start_s": d["times"][0],
                        "end_s": d["times"][-1],
                        "masks": d["masks"],
                    }
                )
        return tracks


def make_video(
    seed: int, *, duration_s: float = 8.0, width: int = 320, height: int = 240, fps: int = 10, density: float = 0.45
) -> ShapesVideo:
    """One clip, fully determined by ``seed``. ``density``: objects starting per second; each lives
    2.5-6 s (entering and leaving included), so 1-4 are on screen at once. At most one object per
    colour at a time."""
    rng = np.random.default_rng(seed)
    pan = float(rng.choice([0.0, 0.0, rng.uniform(6, 18)]))
    bg_w = width + int(math.ceil(pan * duration_s)) + 2
    bg = background(rng, bg_w, height, kind=("solid", "gradient", "texture")[int(rng.integers(3))]).astype(np.uint8)
    side = min(width, height)
    objects: list[MovingShape] = []
    t = float(rng.uniform(0, 0.5))
    colours = list(COLORS)
    while t < duration_s - MIN_LIFE:
        life = float(rng.uniform(MIN_LIFE, 6.0))
        t1 = min(duration_s, t + life)
        busy = {o.colour for o in objects if o.t1 > t and o.t0 < t1}
        free = [c for c in colours if c not in busy]
        if free:
            colour = free[int(rng.integers(len(free)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            size = float(rng.uniform(0.28, 0.42) * side)
            r = size / 2
            if rng.uniform() < 0.5:  # enters from the left or right edge and crosses
                y = float(rng.uniform(r, height - r))
                x0, x1 = (-r * 0.6, width + r * 0.6) if rng.uniform() < 0.5 else (width + r * 0.6, -r * 0.6)
                y1 = float(np.clip(y + rng.uniform(-0.3, 0.3) * height, r, height - r))
                p0, p1 = (x0, y), (x1, y1)
            else:  # appears in view and drifts
                p0 = (float(rng.uniform(r, width - r)), float(rng.uniform(r, height - r)))
                p1 = (
                    float(np.clip(p0[0] + rng.uniform(-0.4, 0.4) * width, r, width - r)),
                    float(np.clip(p0[1] + rng.uniform(-0.3, 0.3) * height, r, height - r)),
                )
            # world coordinates: the pan is added back so the object moves as planned on screen
            p0w, p1w = (p0[0] + pan * t, p0[1]), (p1[0] + pan * t1, p1[1])
            base = np.array(COLORS[colour], float) + rng.integers(-10, 11, size=3)
            objects.append(
                MovingShape(
                    colour,
                    shape,
                    size,
                    float(rng.uniform(0, 2 * math.pi)),
                    float(rng.uniform(-0.5, 0.5)),
                    t,
                    t1,
                    p0w,
                    p1w,
                    tuple(int(v) for v in np.clip(base, 0, 255)),
                )
            )
        t += float(rng.exponential(1.0 / density))
    v = ShapesVideo(seed, width, height, fps, duration_s, objects, pan)
    v._bg = bg
    return v


def write_mp4(video: ShapesVideo, path: str | Path, *, crf: int = 18, rotation: int = 0) -> Path:
    """Encode the clip as H.264 MP4. ``rotation``: store the frames turned and a display matrix
    that turns them back (what phones write), to test that readers honour it."""
    import av

    path = Path(path)
    k = {0: 0, 90: 1, 180: 2, 270: 3}[rotation % 360]
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=video.fps)
        h, w = (video.width, video.height) if k % 2 else (video.height, video.width)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": str(crf), "preset": "veryfast"}
        if k:
            s.set_display_rotation(rotation)
        for _t, rgb in video.frames():
            stored = np.ascontiguousarray(np.rot90(rgb, -k)) if k else rgb
            for p in s.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def scripted_video(
    script: list[tuple[str, str, float, float, tuple[float, float], tuple[float, float]]],
    *,
    seed: int = 0,
    duration_s: float = 8.0,
    width: int = 320,
    height: int = 240,
    fps: int = 10,
    size: float = 0.34,
) -> ShapesVideo:
    """A clip with exactly the given objects: ``(colour, shape, t0, t1, (x0, y0), (x1, y1))``, each
    moving on screen from the first position to the second (fractions of the frame) between t0 and
    t1 (an optional seventh item: its size, instead of ``size``; later objects pass in front of
    earlier ones); a still camera over a background drawn from ``seed``. For tests that need known
    answers."""
    rng = np.random.default_rng(seed)
    bg = background(rng, width + 2, height, kind="gradient").astype(np.uint8)
    objects = [
        MovingShape(
            colour,
            shape,
            (rest[0] if rest else size) * min(width, height),
            0.3,
            0.0,
            t0,
            t1,
            (p0[0] * width, p0[1] * height),
            (p1[0] * width, p1[1] * height),
            COLORS[colour],
        )
        for colour, shape, t0, t1, p0, p1, *rest in script
    ]
    v = ShapesVideo(seed, width, height, fps, duration_s, objects, 0.0)
    v._bg = bg
    return v
