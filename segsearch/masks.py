"""Mask bookkeeping: one container for a set of masks whose per-mask arrays are filtered
and concatenated as a unit (as segment_anything's ``MaskData``), plus COCO RLE helpers.

Masks and boxes are in the pixel coordinates of the orientation-corrected original image.
Boxes are XYWH (COCO convention).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from pycocotools import mask as mask_utils


def encode_rle(mask: np.ndarray) -> dict:
    """Binary (H, W) mask -> COCO RLE with ``counts`` as str (JSON-safe)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def rle_area(rle: dict) -> int:
    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


def mask_box_xywh(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1))


@dataclass
class MaskSet:
    """N masks of one image, all arrays aligned on axis 0."""

    masks: np.ndarray  # (N, H, W) bool
    boxes: np.ndarray  # (N, 4) int, XYWH
    areas: np.ndarray  # (N,) int pixels
    predicted_iou: np.ndarray  # (N,) float
    stability_score: np.ndarray  # (N,) float

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(cls, height: int, width: int) -> MaskSet:
        return cls(
            np.zeros((0, height, width), bool),
            np.zeros((0, 4), np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, np.float32),
        )

    @classmethod
    def from_masks(cls, masks: np.ndarray, predicted_iou, stability_score) -> MaskSet:
        masks = np.asarray(masks, bool)
        boxes = np.array([mask_box_xywh(m) for m in masks], np.int64).reshape(-1, 4)
        return cls(
            masks,
            boxes,
            masks.reshape(len(masks), -1).sum(1).astype(np.int64),
            np.asarray(predicted_iou, np.float32),
            np.asarray(stability_score, np.float32),
        )

    def filter(self, keep) -> MaskSet:
        """Keep rows selected by a boolean mask or index array; all arrays move together."""
        return MaskSet(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    @staticmethod
    def cat(sets: list[MaskSet]) -> MaskSet:
        return MaskSet(**{f.name: np.concatenate([getattr(s, f.name) for s in sets]) for f in fields(MaskSet)})

    def sort_canonical(self) -> MaskSet:
        """Deterministic order (largest first, then position) so mask indices, and hence
        segment ids, do not depend on the engine's internal order."""
        order = np.lexsort((self.boxes[:, 0], self.boxes[:, 1], -self.areas))
        return self.filter(order)
