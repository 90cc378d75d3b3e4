"""Shapes world: deterministic synthetic scenes with ground-truth instance masks and labels.

Used to train the bundled small models (``training/``), by the offline demo, by quality and
speed benchmarks (``bench/``) and by tests. A scene is 1–6 shapes (circle, square, triangle,
ring, star) in named colours on a solid, gradient or textured background, with random sizes,
rotations, overlaps and occlusions. Ground truth masks are the *visible* part of each shape.

Rules that keep the ground truth honest: overlapping or touching shapes never share a colour
(they would be one blob to any segmenter); each shape keeps at least ``MIN_VISIBLE`` of its area
visible; background colours keep a distance from every named colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from segsearch.models.known import SAM_SHAPES_TINY_AMG

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (40, 170, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 40),
    "purple": (135, 50, 170),
    "orange": (245, 135, 25),
    "white": (248, 248, 248),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "ring", "star")
BACKGROUNDS = ("solid", "gradient", "texture")
MIN_VISIBLE = 0.6
CLASSES = [(c, s) for c in COLORS for s in SHAPES]


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) bool, visible part of each shape
    labels: list[tuple[str, str]]  # (colour, shape) per mask
    seed: int

    @property
    def captions(self) -> list[str]:
        return [f"{c} {s}" for c, s in self.labels]


def shape_mask(
    shape: str, cx: float, cy: float, size: float, angle: float, width: int, height: int, ring_ratio: float = 0.55
) -> np.ndarray:
    """Binary mask of one shape of bounding size ``size`` centred at (cx, cy), rotated ``angle`` rad."""
    im = Image.new("L", (width, height), 0)
    d = ImageDraw.Draw(im)
    r = size / 2.0

    def poly(points):
        rot = [
            (cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle))
            for x, y in points
        ]
        d.polygon(rot, fill=255)

    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * ring_ratio
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif shape == "square":
        h = r * 0.82
        poly([(-h, -h), (h, -h), (h, h), (-h, h)])
    elif shape == "triangle":
        poly([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
    elif shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rr * math.cos(a), rr * math.sin(a)))
        poly(pts)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(im) > 127


def _far_from_named(rng: np.random.Generator, min_dist: float = 90.0) -> np.ndarray:
    named = np.array(list(COLORS.values()), float)
    for _ in range(1000):
        c = rng.uniform(30, 225, size=3)
        if np.min(np.linalg.norm(named - c, axis=1)) >= min_dist:
            return c
    return np.array([128.0, 128.0, 128.0])


def background(rng: np.random.Generator, width: int, height: int, kind: str | None = None) -> np.ndarray:
    kind = kind or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    c1 = _far_from_named(rng)
    if kind == "solid":
        img = np.broadcast_to(c1, (height, width, 3)).astype(float)
    elif kind == "gradient":
        c2 = _far_from_named(rng)
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(float)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif kind == "texture":
        # low-frequency blobs + fine grain, around one colour
        small = rng.normal(0, 1, size=(max(2, height // 48), max(2, width // 48), 3))
        low = (
            np.asarray(
                Image.fromarray(((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8)).resize(
                    (width, height), Image.BICUBIC
                ),
                float,
            )
            / 255.0
            - 0.5
        )
        grain = rng.normal(0, 8, size=(height, width, 1))
        img = c1 + low * 50 + grain
    else:
        raise ValueError(kind)
    return np.clip(img, 0, 255)


def _dilate(mask: np.ndarray, r: int = 2) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def make_scene(
    seed: int,
    *,
    width: int | None = None,
    height: int | None = None,
    n_shapes: int | None = None,
    min_size: float = 0.15,
    max_size: float = 0.38,
    jitter: int = 14,
    nested: float = 0.0,
) -> Scene:
    """One scene, fully determined by ``seed`` (and the optional overrides). ``nested``: the
    chance that one more, small shape is painted inside a larger one (a star on a square: what
    "inside" queries are about); drawn from its own generator, so the rest of the scene is the same."""
    rng = np.random.default_rng(seed)
    width = width or int(rng.integers(8, 25)) * 32  # 256..768
    if height is None:  # aspect ratio within 0.6..1.67 so shapes stay visible at model resolution
        height = int(np.clip(round(width * rng.uniform(0.6, 1.67) / 32) * 32, 256, 768))
    n = n_shapes or int(rng.integers(1, 7))
    img = background(rng, width, height)
    side = min(width, height)
    full_masks: list[np.ndarray] = []
    labels: list[tuple[str, str]] = []
    colour_names = list(COLORS)
    for _ in range(n):
        for _attempt in range(40):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = colour_names[int(rng.integers(len(colour_names)))]
            size = rng.uniform(min_size, max_size) * side
            cx = rng.uniform(size * 0.45, width - size * 0.45)
            cy = rng.uniform(size * 0.45, height - size * 0.45)
            m = shape_mask(
                shape, cx, cy, size, rng.uniform(0, 2 * math.pi), width, height, ring_ratio=rng.uniform(0.45, 0.62)
            )
            if m.sum() < 200:
                continue
            grown = _dilate(m)
            ok = True
            for fm, (c, _s) in zip(full_masks, labels):
                if c == colour and (grown & fm).any():
                    ok = False  # same colour touching: would be one blob
                    break
                # the new shape is drawn on top: every earlier shape keeps enough visible area
            if ok:
                cover = m.copy()
                for i in range(len(full_masks) - 1, -1, -1):
                    vis = full_masks[i] & ~cover
                    if vis.sum() < MIN_VISIBLE * full_masks[i].sum():
                        ok = False
                        break
                    cover |= full_masks[i]
            if ok:
                full_masks.append(m)
                labels.append((colour, shape))
                break
    if nested and full_masks:
        _nest(np.random.default_rng([seed, 1]), nested, full_masks, labels, width, height)
    # paint in order; visible mask = own area minus everything painted later
    visible = []
    for m, (colour, _s) in zip(full_masks, labels):
        col = np.array(COLORS[colour], float) + rng.integers(-jitter, jitter + 1, size=3)
        img[m] = np.clip(col, 0, 255)
    for i, m in enumerate(full_masks):
        later = np.zeros_like(m)
        for fm in full_masks[i + 1 :]:
            later |= fm
        visible.append(m & ~later)
    masks = np.stack(visible) if visible else np.zeros((0, height, width), bool)
    return Scene(np.clip(img, 0, 255).astype(np.uint8), masks, labels, seed)


def _nest(rng, chance, full_masks, labels, width, height) -> None:
    """Maybe add a small shape well inside the largest solid shape (rings are skipped: their hole
    would leave a gap of background around it)."""
    if rng.uniform() >= chance:
        return
    hosts = [i for i, (_c, s) in enumerate(labels) if s != "ring"]
    if not hosts:
        return
    i = max(hosts, key=lambda k: int(full_masks[k].sum()))
    ys, xs = np.nonzero(full_masks[i])
    side = float(max(xs.max() - xs.min(), ys.max() - ys.min()))
    colours = [c for c in COLORS if c != labels[i][0]]
    for _ in range(20):
        shape = ("circle", "square", "triangle", "star")[int(rng.integers(4))]
        colour = colours[int(rng.integers(len(colours)))]
        size, angle = side * rng.uniform(0.36, 0.46), rng.uniform(0, 2 * math.pi)
        m = shape_mask(shape, xs.mean(), ys.mean(), size, angle, width, height)
        if m.sum() >= 200 and not (_dilate(m, 3) & ~full_masks[i]).any():
            if any(c == colour and (_dilate(m) & fm).any() for fm, (c, _s) in zip(full_masks, labels)):
                continue
            full_masks.append(m)
            labels.append((colour, shape))
            return


def make_small_scene(
    seed: int, *, width: int = 1024, height: int = 768, n_small: int = 18, small_px=(24, 40), nested: float = 0.0
) -> Scene:
    """A scene with many small shapes beside a few large ones: two shapes of 25–40% of the image's
    side (``make_scene``'s, ``nested`` as there), then ``n_small`` shapes of ``small_px`` pixels
    (at 1024 px wide; scaled with ``width``) where they fit: apart from each other, and on a large
    shape only in another colour (a small object inside a large one). What a sparse prompt grid
    misses: a 32 x 32 grid's points are 32 px apart at 1024 px."""
    base = make_scene(seed, width=width, height=height, n_shapes=2, min_size=0.25, max_size=0.4, nested=nested)
    rng = np.random.default_rng([seed, 2])
    img, masks, labels = base.image.copy(), list(base.masks), list(base.labels)
    scale = width / 1024
    taken = np.zeros((height, width), bool)
    small = []
    for _ in range(n_small * 20):
        if len(small) >= n_small:
            break
        size = rng.uniform(*small_px) * scale
        cx, cy = rng.uniform(size, width - size), rng.uniform(size, height - size)
        shape = ("circle", "square", "triangle", "star")[int(rng.integers(4))]
        m = shape_mask(shape, cx, cy, size, rng.uniform(0, 2 * math.pi), width, height)
        if m.sum() < 60 or (_dilate(m, 3) & taken).any():
            continue
        under = {labels[i][0] for i, big in enumerate(masks) if (_dilate(m, 2) & big).any()}
        colour = [c for c in COLORS if c not in under][int(rng.integers(len(COLORS) - len(under)))]
        img[m] = np.clip(np.array(COLORS[colour], float) + rng.integers(-14, 15, size=3), 0, 255)
        taken |= m
        small.append(m)
        labels.append((colour, shape))
    visible = [big & ~taken for big in masks] + small
    keep = [i for i, v in enumerate(visible) if v.any()]
    return Scene(img, np.stack([visible[i] for i in keep]), [labels[i] for i in keep], seed)


# Disjoint seed ranges: what trains the models never evaluates them.
TRAIN_SEEDS = range(0, 1_000_000)
HELDOUT_SEEDS = range(10_000_000, 10_100_000)
DEMO_SEEDS = range(20_000_000, 20_100_000)
# For choosing settings (thresholds, grid): tuning on the held-out scenes would flatter them.
VALIDATION_SEEDS = range(30_000_000, 30_100_000)

# Mask-generation settings for the bundled shapes models: a 16×16 prompt grid covers every
# shape (each is at least 15% of the image side) at a quarter of the default grid's cost; the
# filters are calibrated for the small model, whose masks are upsampled up to 6× from a 128×128
# grid (softer edges: lower stability than ViT-H's, for which SAM's defaults were chosen). Chosen on
# the validation split (bench/quality.py --split validation, 60 scenes): stability 0.8 / 0.6 / 0.5
# gave mask recall 0.814 / 0.872 / 0.876; precision@5 at 0.6 / 0.5: 0.954 / 0.945.
# SAM's small-region clean-up (islands and holes under min_mask_region_area px removed) keeps a few
# stray pixels on a neighbouring shape from stretching a mask's box, hence its crop, so CLIP sees a
# small shape in a large square. Validation, min_mask_region_area 0 / 30 / 100 / 300 / 600 / 1200:
# precision@5 0.954 / 0.959 / 0.979 / 0.990 / 0.990 / 0.995, recall@10 0.873 / 0.878 / 0.887 /
# 0.890 / 0.899 / 0.902, mask recall 0.872 / 0.867 (30 to 600) / 0.863.
SHAPES_AMG = dict(SAM_SHAPES_TINY_AMG)  # (sam-shapes-tiny runs with them by default too)
