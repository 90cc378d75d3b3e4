"""Mask generation behind a small interface, so a faster engine can replace the reference.

``MaskGenerator.generate(rgb) -> MaskSet``: masks in the coordinates of ``rgb``, in a
canonical order (so segment ids do not depend on engine internals).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from segsearch.masks import MaskSet


class MaskGenerator(Protocol):
    name: str

    def generate(self, rgb: np.ndarray) -> MaskSet: ...


class ReferenceAMG:
    """The official ``segment_anything.SamAutomaticMaskGenerator``."""

    name = "reference"

    def __init__(self, sam, **params):
        from segment_anything import SamAutomaticMaskGenerator

        self.params = params
        self._amg = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **params)

    def generate(self, rgb: np.ndarray) -> MaskSet:
        import torch

        with torch.inference_mode():
            records = self._amg.generate(rgb)
        if not records:
            return MaskSet.empty(rgb.shape[0], rgb.shape[1])
        masks = np.stack([r["segmentation"] for r in records])
        return MaskSet.from_masks(
            masks,
            [r["predicted_iou"] for r in records],
            [r["stability_score"] for r in records],
        ).sort_canonical()


def _fast(sam, **params):
    from segsearch.indexer.fast_amg import FastAMG

    return FastAMG(sam, **params)


ENGINES = {"fast": _fast, "reference": ReferenceAMG}


def make_mask_generator(engine: str, sam, **params) -> MaskGenerator:
    try:
        return ENGINES[engine](sam, **params)
    except KeyError:
        from segsearch.errors import ConfigError

        raise ConfigError(f"unknown mask engine {engine!r}; choose one of {', '.join(ENGINES)}") from None
