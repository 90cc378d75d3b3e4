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
    if engine not in ENGINES:
        from segsearch.errors import ConfigError

        raise ConfigError(f"unknown mask engine {engine!r}; choose one of {', '.join(ENGINES)}")
    keep_freed_memory()
    return ENGINES[engine](sam, **params)


def mask_generator_for(models):
    """The automatic mask generator of ``models`` (``segsearch.runtime.Models``), built on first use
    around its SAM with the settings' engine and parameters, then kept on ``models``."""
    if models.mask_generator is None:
        models.mask_generator = make_mask_generator(models.engine, models.sam, **models.settings.amg_params())
    return models.mask_generator


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Make glibc's allocator keep freed large blocks for reuse (process-wide, once).

    Mask generation allocates and frees tensors of several MB for every prompt batch. By default
    glibc serves such blocks with fresh ``mmap``s and gives freed heap back to the OS, so each batch
    pays page faults and kernel zeroing: on one CPU thread the bundled SAM's automatic masks spent
    a third of their time in the kernel (sys 11 s of 45 s). Raising the mmap threshold to its
    maximum (32 MB) and the trim threshold to 1 GiB keeps that memory in the heap; peak memory is
    unchanged, freed memory is simply not returned until exit. Both engines get it (the benchmark
    compares them in one process). Not glibc (macOS, musl): nothing to do."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    _ALLOCATOR_TUNED = mallopt(m_mmap_threshold, 32 << 20) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
    return _ALLOCATOR_TUNED
