"""The working resolution: SAM's masks of a large photo are made on a view of at most
``mask_side`` pixels on its long side (``SEGSEARCH_MASK_SIDE``, 2048 by default) and carried to
the photo's own pixels only where a record or a crop reads them.

SAM sees 1024 px on the long side and answers in 256 px logits; upsampling those to a 24 MP photo
adds no detail the model saw (the boundary is the same bilinear curve, drawn finer), yet it made
post-processing, the small-region clean-up, RLE encoding and crops grow with the photo's pixels
(a 24 MP photo cost 2.5-3.4x a 4 MP one with the bundled models). Here:

- the engine (either, unchanged) runs on the view; ``min_mask_region_area`` is scaled to it, so a
  region is "small" in the photo's pixels as before;
- each mask's RLE, area and box in the photo's pixels come from its runs by nearest scaling
  (:func:`~segsearch.masks.upscaled_rle`, equal to encoding the dense nearest upscale);
- a crop is cut from the view when the view has at least twice CLIP's input across it (CLIP's
  resize would drop the photo's extra pixels anyway), else from the photo, window only.

Photos within ``mask_side`` (and every video frame) are processed at their own size, exactly as
before; ``mask_side = 0`` does that for every photo (libraries indexed before this setting existed
keep it, and their fingerprints).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from segsearch.masks import MaskSet

# A crop is cut from the view when its square has at least this many times CLIP's input size in
# view pixels: CLIP's own resize then shrinks it by that factor or more, so the photo's extra
# pixels would not reach the model. Smaller crops come from the photo (their windows are small).
VIEW_CROP_FACTOR = 2


@dataclass
class PhotoMasks:
    """A photo's masks in the working view's frame, with the view and the photo's size."""

    masks: MaskSet
    view: np.ndarray  # (h, w, 3) uint8, the image the engine saw
    height: int  # the photo's
    width: int


def view_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) of the working view: the photo's own size when it fits ``side`` (or side is 0)."""
    long = max(height, width)
    if side <= 0 or long <= side:
        return height, width
    f = side / long
    return max(1, round(height * f)), max(1, round(width * f))


def working_view(rgb: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    h, w = view_size(rgb.shape[0], rgb.shape[1], side)
    if (h, w) == rgb.shape[:2]:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR, reducing_gap=2.0))


@contextmanager
def _region_area_scaled(generator, factor: float):
    """``generator.min_mask_region_area`` (photo pixels) as view pixels while it runs."""
    area = getattr(generator, "min_mask_region_area", 0) or 0
    if factor >= 1.0 or area <= 0:
        yield
        return
    generator.min_mask_region_area = max(1, round(area * factor))
    try:
        yield
    finally:
        generator.min_mask_region_area = area


def generate_photo(generator, rgb: np.ndarray, side: int) -> MaskSet | PhotoMasks:
    """The photo's masks: a MaskSet in its own pixels when it fits ``side``, else PhotoMasks."""
    view = working_view(rgb, side)
    if view is rgb:
        return generator.generate(rgb)
    with _region_area_scaled(generator, (view.shape[0] * view.shape[1]) / (rgb.shape[0] * rgb.shape[1])):
        masks = generator.generate(view)
    return PhotoMasks(masks, view, rgb.shape[0], rgb.shape[1])
