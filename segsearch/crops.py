"""Cut one CLIP-ready crop per mask.

The crop is the mask's box plus context padding, made square (so CLIP's centre crop cuts
nothing) and resized. Outside the mask, pixels are filled (``masked``, default), kept
(``box``) or blurred (``blur``); ``dim`` (darkened context) is for showing crops to people.
Out-of-image padding is filled with the same colour.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

# CLIP's mean pixel: the "nothing here" colour for the network.
FILL = (122, 116, 104)
# A crop's square canvas is at most this many pixels per side before it is resized to CLIP's input
# (224-448 px): larger regions are scaled down first. Bounds memory by design: the whole-image crop
# of a 100x100000 strip would otherwise ask for a 100000x100000 canvas (30 GB). Crops up to this
# side are cut exactly as before.
MAX_CANVAS = 2048


def square_box(box_xywh, padding: float, width: int, height: int) -> tuple[int, int, int]:
    """Square (x0, y0, side) around a box with ``padding`` × its longer side added on each side.
    May extend outside the image; the crop pads there."""
    x, y, w, h = (float(v) for v in box_xywh)
    side = max(w, h) * (1.0 + 2.0 * padding)
    side = max(side, 8.0)
    cx, cy = x + w / 2.0, y + h / 2.0
    return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), int(round(side))


def cut_crop(
    rgb: np.ndarray, mask: np.ndarray | None, box_xywh, *, mode: str = "masked", padding: float = 0.1, size: int = 224
) -> Image.Image:
    height, width = rgb.shape[:2]
    x0, y0, side = square_box(box_xywh, padding, width, height)
    # window of the source that lies inside the image
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, width), min(y0 + side, height)
    scale = min(1.0, MAX_CANVAS / side)
    c = side if scale == 1.0 else MAX_CANVAS
    canvas = np.empty((c, c, 3), np.uint8)
    canvas[:] = FILL
    if sx1 > sx0 and sy1 > sy0:
        patch = rgb[sy0:sy1, sx0:sx1]
        m = mask[sy0:sy1, sx0:sx1] if mask is not None and mode != "box" else None
        # where the window lands on the canvas
        dx0, dy0 = int(round((sx0 - x0) * scale)), int(round((sy0 - y0) * scale))
        dx1, dy1 = (
            min(c, max(dx0 + 1, int(round((sx1 - x0) * scale)))),
            min(c, max(dy0 + 1, int(round((sy1 - y0) * scale)))),
        )
        if scale < 1.0:  # scale the window down before anything else: memory ~ MAX_CANVAS², not side²
            patch = np.asarray(Image.fromarray(patch).resize((dx1 - dx0, dy1 - dy0), Image.BILINEAR, reducing_gap=2.0))
            if m is not None:
                m = np.asarray(Image.fromarray(m).resize((dx1 - dx0, dy1 - dy0), Image.NEAREST))
        if m is not None:
            if mode == "masked":
                bg = np.empty_like(patch)
                bg[:] = FILL
            elif mode == "blur":
                radius = max(2.0, side * scale / 20.0)
                bg = np.asarray(Image.fromarray(patch).filter(ImageFilter.GaussianBlur(radius)))
            elif mode == "dim":
                bg = (patch * 0.35 + 25.5).astype(np.uint8)
            else:
                raise ValueError(f"unknown crop mode {mode!r}")
            patch = np.where(m[:, :, None], patch, bg)
        canvas[dy0:dy1, dx0:dx1] = patch
    im = Image.fromarray(canvas)
    return im if size == c else im.resize((size, size), Image.BICUBIC)


def whole_image(rgb: np.ndarray, size: int = 224) -> Image.Image:
    """The whole image, letterboxed to a square so nothing is cut."""
    h, w = rgb.shape[:2]
    return cut_crop(rgb, None, (0, 0, w, h), mode="box", padding=0.0, size=size)
