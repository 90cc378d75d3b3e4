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


def rle_counts(rle: dict) -> np.ndarray:
    """The run lengths of a COCO RLE (alternating 0s and 1s, column-major, starting with 0s), from
    its compressed string (the LEB128-like code of pycocotools' ``rleFrString``) or its list."""
    counts = rle["counts"]
    if isinstance(counts, list):
        return np.asarray(counts, np.int64)
    s = counts.encode("ascii") if isinstance(counts, str) else counts
    out: list[int] = []
    p = 0
    while p < len(s):
        x = k = 0
        more = True
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return np.asarray(out, np.int64)


def decode_window(rle: dict, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """The mask inside the window [x0, x1) x [y0, y1) only, as (y1 - y0, x1 - x0) bool: work and
    memory follow the window, not the photo (a full decode of a 24 MP mask is 24 MB)."""
    h, w = rle["size"]
    x0, x1 = min(max(0, x0), w), min(max(0, x1), w)
    y0, y1 = min(max(0, y0), h), min(max(0, y1), h)
    out = np.zeros((max(0, x1 - x0), h), bool)  # columns of the window, full height (column-major runs)
    if x1 <= x0 or y1 <= y0:
        return out.T[y0:y1]
    ends = np.cumsum(rle_counts(rle))
    starts = ends - rle_counts(rle)
    lo, hi = x0 * h, x1 * h
    flat = out.reshape(-1)
    for a, b in zip(starts[1::2], ends[1::2]):  # the runs of 1s
        if b <= lo or a >= hi:
            continue
        flat[max(a, lo) - lo : min(b, hi) - lo] = True
    return out.T[y0:y1]


def scaled_rows(n: int, full: int) -> np.ndarray:
    """Where each of ``n`` working rows (or columns) starts in a ``full``-pixel axis, plus the end:
    full pixel ``Y`` shows working pixel ``floor(Y * n / full)`` (nearest scaling), so working pixel
    ``i`` covers ``[starts[i], starts[i + 1])``."""
    return (np.arange(n + 1, dtype=np.int64) * full + n - 1) // n


def upscaled_rle(mask: np.ndarray, height: int, width: int) -> tuple[dict, int, tuple[int, int, int, int]]:
    """A working-resolution (h, w) mask carried to a (height, width) photo by nearest scaling, as
    (COCO RLE, area, XYWH box) in the photo's pixels, computed from the mask's row transitions:
    work and memory follow the mask's size and the photo's width, never the photo's pixel count (a
    dense 24 MP mask is 24 MB). Equal to ``encode_rle`` of the dense nearest upscale."""
    m = np.asarray(mask, bool)
    h, w = m.shape
    rs, cs = scaled_rows(h, height), scaled_rows(w, width)
    rep = np.diff(cs)  # photo columns per working column
    per_col = np.diff(rs).astype(np.float64) @ m  # photo pixels set in one photo column of each (exact)
    area = int(round(float(per_col @ rep)))
    if area == 0:
        return _empty_rle(height, width), 0, (0, 0, 0, 0)
    # transitions inside a column: working row i+1 differs from row i, at photo row rs[i + 1]
    ii, jj = np.nonzero(m[1:] != m[:-1])
    n = rep[jj]
    first = np.repeat(np.cumsum(n) - n, n)
    cols = np.repeat(cs[jj], n) + (np.arange(int(n.sum())) - first)  # every photo column showing it
    inner = cols * height + np.repeat(rs[ii + 1], n)
    # transitions between columns: a photo column's first row differs from the previous one's last
    col_of = np.repeat(np.arange(w), rep)
    top, bottom = m[0, col_of], m[-1, col_of]
    edges = np.flatnonzero(top[1:] != bottom[:-1]) + 1
    pos = np.concatenate([[0] if top[0] else [], inner, edges * height]).astype(np.int64)
    pos.sort()
    counts = np.diff(np.concatenate([[0], pos, [height * width]]))
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
    ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(per_col)
    y0, y1, x0, x1 = rs[ys[0]], rs[ys[-1] + 1], cs[xs[0]], cs[xs[-1] + 1]
    box = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}, area, box


def _empty_rle(height: int, width: int) -> dict:
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": [height * width]}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


class ScaledMask:
    """A working-resolution mask seen at a photo's size by nearest scaling, for windows only:
    ``sm[y0:y1, x0:x1]`` costs the window, not the photo."""

    def __init__(self, mask: np.ndarray, height: int, width: int):
        self.mask, self.shape = mask, (height, width)
        h, w = mask.shape
        self._rows = (np.arange(height, dtype=np.int64) * h) // height
        self._cols = (np.arange(width, dtype=np.int64) * w) // width

    def __getitem__(self, key) -> np.ndarray:
        ys, xs = key
        return self.mask[self._rows[ys]][:, self._cols[xs]]


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


# --- low-resolution logits as an opaque token (iterative prompting across requests) -------------
_TOKEN_VERSION = b"M1"
LOGIT_SCALE = 4.0  # int8 steps of 0.25 logit over SAM's clamped range [-32, 32]: ample for a mask prior


def encode_logits_token(logits: np.ndarray, key: str) -> str:
    """A previous answer's low-resolution logits (h x w) as a compact token tied to one image
    (``key``): int8 at 0.25-logit steps, zlib, base64url (a 256x256 mask is a few KB)."""
    import base64
    import struct
    import zlib

    q = np.clip(np.round(np.asarray(logits, np.float32) * LOGIT_SCALE), -128, 127).astype(np.int8)
    h, w = q.shape
    head = _TOKEN_VERSION + struct.pack("<HH", h, w) + key.encode()[:16].ljust(16, b"\0")
    return base64.urlsafe_b64encode(head + zlib.compress(q.tobytes(), 6)).decode()


def decode_logits_token(token: str, key: str, shape: tuple[int, int]) -> np.ndarray:
    """The logits of a token made by :func:`encode_logits_token` for the same image and model
    (``shape``); ``ValueError`` saying why for anything else (it comes from a client)."""
    import base64
    import binascii
    import struct
    import zlib

    if len(token) > 4 * (1 + shape[0] * shape[1] // 3) + 64:  # > its raw size: not ours
        raise ValueError("mask_input token is too long")
    try:
        raw = base64.urlsafe_b64decode(token.encode())
    except (binascii.Error, ValueError):
        raise ValueError("mask_input is not a token returned by this service (bad base64)") from None
    if len(raw) < 22 or raw[:2] != _TOKEN_VERSION:
        raise ValueError("mask_input is not a token returned by this service")
    h, w = struct.unpack("<HH", raw[2:6])
    if (h, w) != tuple(shape):
        raise ValueError(f"mask_input was made by a model with {h}x{w} logits; this one uses {shape[0]}x{shape[1]}")
    if raw[6:22] != key.encode()[:16].ljust(16, b"\0"):
        raise ValueError("mask_input belongs to another image")
    d = zlib.decompressobj()
    try:
        body = d.decompress(raw[22:], h * w + 1)  # bounded: a small token cannot inflate past h*w
        more = d.decompress(d.unconsumed_tail, 1) if d.unconsumed_tail else b""
    except zlib.error:
        raise ValueError("mask_input token is corrupt") from None
    if len(body) != h * w or more or not d.eof:  # (the end of the stream checks its checksum)
        raise ValueError("mask_input token is corrupt")
    return np.frombuffer(body, np.int8).reshape(h, w).astype(np.float32) / LOGIT_SCALE
