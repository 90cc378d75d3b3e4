"""Mask generation behind a small interface, so a faster engine can replace the reference.

``MaskGenerator.generate(rgb) -> MaskSet``: masks in the coordinates of ``rgb``, in a
canonical order (so segment ids do not depend on engine internals).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from segsearch.masks import MaskSet
from segsearch.models import amg_params


class MaskGenerator(Protocol):
    name: str

    def generate(self, rgb: np.ndarray) -> MaskSet: ...


def family_params(sam, params: dict) -> dict:
    """``params`` with unset (None) values replaced by the model family's defaults (``mask_side`` is
    not a generator's: the working resolution is applied around it, ``indexer/working.py``; nor is
    ``sam_precision``: :func:`make_mask_generator` sets it on the model)."""
    from segsearch.models.registry import FAMILY_AMG_DEFAULTS
    from segsearch.models.sam import is_sam2

    defaults = FAMILY_AMG_DEFAULTS["sam2" if is_sam2(sam) else "sam1"]
    return {
        k: (defaults.get(k) if v is None else v)
        for k, v in params.items()
        if (v is not None or k in defaults) and k not in ("mask_side", "sam_precision")
    }


class ReferenceAMG:
    """The official generator of the model's family: ``segment_anything.SamAutomaticMaskGenerator``
    or ``sam2.SAM2AutomaticMaskGenerator``. The small-region clean-up runs after it, for both
    families, as :func:`clean_small_regions` (SAM 1's own algorithm, so SAM 1's masks are its
    generator's): SAM 2's package needs its CUDA extension for one of its two steps and skips it
    without one, so ``min_mask_region_area`` would mean different things on different machines.
    ``min_mask_region_area`` is an attribute read at each ``generate`` (the working resolution
    scales it to the view, ``indexer/working.py``), as on the fast engines."""

    name = "reference"

    def __init__(self, sam, **params):
        from segsearch.models.sam import fit_feature_sizes, is_sam2

        params = family_params(sam, params)  # (also when built directly, not by make_mask_generator)
        params.pop("prompts", None)  # the official generators decode the whole grid
        params.pop("prompt_similarity", None)
        self.params = params
        self.sam2 = is_sam2(sam)
        self.min_mask_region_area = params.get("min_mask_region_area", 0)
        if self.sam2:
            import warnings

            from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

            with warnings.catch_warnings():  # (its transforms use the deprecated torch.jit.script)
                warnings.simplefilter("ignore", FutureWarning)
                self._amg = SAM2AutomaticMaskGenerator(
                    sam, output_mode="binary_mask", **{**params, "min_mask_region_area": 0}
                )
            fit_feature_sizes(self._amg.predictor)  # (any input size, not only 1024 px)
        else:
            from segment_anything import SamAutomaticMaskGenerator

            self._amg = SamAutomaticMaskGenerator(
                sam, output_mode="binary_mask", **{**params, "min_mask_region_area": 0}
            )

    def generate(self, rgb: np.ndarray) -> MaskSet:
        import torch

        with torch.inference_mode():
            records = self._amg.generate(rgb)
        if not records:
            return MaskSet.empty(rgb.shape[0], rgb.shape[1])
        masks = np.stack([r["segmentation"] for r in records])
        iou = np.array([r["predicted_iou"] for r in records], np.float32)
        stab = np.array([r["stability_score"] for r in records], np.float32)
        if self.min_mask_region_area > 0:
            nms = max(self.params.get("box_nms_thresh", 0.7), self.params.get("crop_nms_thresh", 0.7))
            masks, iou, stab = clean_small_regions(masks, iou, stab, self.min_mask_region_area, nms)
        return MaskSet.from_masks(masks, iou, stab).sort_canonical()


def clean_small_regions(masks: np.ndarray, iou, stab, min_area: int, nms_thresh: float):
    """SAM's small-region clean-up (``postprocess_small_regions`` of both generators): holes, then
    islands, under ``min_area`` pixels are removed from each mask, then box NMS, preferring masks
    the clean-up did not change. ``(masks, iou, stab)`` of the kept masks."""
    import torch
    from segment_anything.utils.amg import batched_mask_to_box, remove_small_regions
    from torchvision.ops.boxes import batched_nms

    if len(masks) == 0:
        return masks, iou, stab
    new, scores = [], []
    for m in masks:
        m, c1 = remove_small_regions(m, min_area, mode="holes")
        m, c2 = remove_small_regions(m, min_area, mode="islands")
        new.append(m)
        scores.append(float(not (c1 or c2)))
    cleaned = np.stack(new)
    boxes = batched_mask_to_box(torch.as_tensor(cleaned))
    keep = batched_nms(
        boxes.float(), torch.as_tensor(scores), torch.zeros(len(boxes)), iou_threshold=nms_thresh
    ).numpy()
    return cleaned[keep], np.asarray(iou)[keep], np.asarray(stab)[keep]


def _fast(sam, **params):
    from segsearch.models.sam import is_sam2

    if is_sam2(sam):
        from segsearch.indexer.fast_amg2 import FastAMG2

        return FastAMG2(sam, **params)
    from segsearch.indexer.fast_amg import FastAMG

    return FastAMG(sam, **params)


ENGINES = {"fast": _fast, "reference": ReferenceAMG}


def make_mask_generator(engine: str, sam, **params) -> MaskGenerator:
    if engine not in ENGINES:
        from segsearch.errors import ConfigError

        raise ConfigError(f"unknown mask engine {engine!r}; choose one of {', '.join(ENGINES)}")
    keep_freed_memory()
    if "sam_precision" in params:
        from segsearch.models.sam import set_precision

        set_precision(sam, params["sam_precision"])
    return ENGINES[engine](sam, **family_params(sam, params))


def sam_stage_times(generator, seconds: float) -> dict[str, float]:
    """A ``generate`` call's stage seconds: ``sam_encoder`` / ``sam_decoder`` / ``sam_postprocess``
    where the generator reports them (the fast engines), else its whole time as ``sam``."""
    sub = getattr(generator, "timings", None)
    if not sub:
        return {"sam": seconds}
    return {f"sam_{k}": v for k, v in sub.items() if k in ("encoder", "decoder", "postprocess")}


def mask_generator_for(models):
    """The automatic mask generator of ``models`` (``segsearch.runtime.Models``), built on first use
    around its SAM with the settings' engine and parameters, then kept on ``models``."""
    if models.mask_generator is None:
        models.mask_generator = make_mask_generator(models.engine, models.sam, **amg_params(models.settings))
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


def release_freed_memory() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim``), where
    :func:`keep_freed_memory` told it to keep them. A long job calls this now and then: the kept
    blocks fragment as allocation sizes vary from frame to frame, and a 20-minute video's peak
    memory grew 1.12x over a 1-minute one's (1,159 -> 1,297 MiB) without it."""
    if not _ALLOCATOR_TUNED:
        return
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
