"""Video tracks by propagation: each live track's mask is the prompt for the next sampled frame.

SAM 2.1's guidance for video: the mask from frame N prompts frame N+1, and automatic mask
generation runs only where something new may be. Per sampled frame this costs one image encoding
and one decoded prompt per live track, instead of a grid of prompts (1,024 for SAM's defaults)
and its post-processing.

How a track is carried (``Propagator.carry``): its last mask, moved by the track's velocity, is
the prior. A point at the prior's most interior pixel (farthest from its edge) prompts SAM with
multimask output, and of the three masks the one that best overlaps the prior is kept: a point
alone is ambiguous (part, object, group), the prior says which one the track is. The carried
mask must overlap the prior by ``CARRY_IOU`` and have a predicted IoU of ``CARRY_SCORE``,
else the track is lost for this frame (occluded, gone, or changed past recognition). Point
prompts because every model here was trained on them (the bundled SAMs saw no box or mask prompt).

A track whose object and surroundings did not change since the last sample keeps its mask without
SAM (a parked car, a still camera); a frame where nothing moved is not even encoded.

Where new objects are looked for (``Keyframes``): the picture is compared with the last sample at
the tracker's low resolution, outside the tracked masks (now and a sample ago). Automatic masks
run on the first frame, when most of the picture changed (a cut, a pan) and at least every
``video_refresh_seconds``; when only some of it changed (something entered, or came back from
behind another object), SAM is prompted only there: a point per changed block (``discover``),
masks kept as the automatic generator keeps them (predicted IoU, stability, overlap). New masks that a
carried mask already covers are dropped; the rest start tracks or re-join lost ones through the
``Tracker``'s appearance test.
"""

from __future__ import annotations

import numpy as np

from segsearch.masks import MaskSet

from segsearch.indexer.tracks import mask_iou, shift_mask

# A carried mask is kept when it has the track's shape: its IoU with the track's last mask moved
# onto it (at the tracker's low resolution) is at least this...
CARRY_IOU = 0.5
# ... its area is within this factor of the last one, it lies within MAX_JUMP object sizes of where
# the track's velocity puts it (a small object moves by much of its size between samples, and a
# velocity is a guess)...
CARRY_AREA = 2.0
MAX_JUMP = 1.5
# How far (object sizes, at least 4 low-res pixels) around the motion guess an object is looked for,
# comparing this many of its cells (spread over the mask).
SEARCH = 1.5
MATCH_CELLS = 128
# ... and SAM's own predicted IoU for it is at least this (well under the automatic masks'
# thresholds: the shape test above is the stronger evidence, and a partly hidden object, or a ring
# prompted on its band, scores low with the bundled SAMs while its track should go on)
CARRY_SCORE = 0.3
# A carried track's crop is embedded again when its last embedded crop is this old (seconds): its
# vector is the mean of its crops' and its appearance changes slowly, so at the default 2 samples
# a second every other crop is embedded (CLIP was ~10% of a propagated video-minute).
TRACK_EMBED_SECONDS = 1.0
# Two tracks whose carried masks overlap this much have met one object: the younger one is lost.
SAME_OBJECT_IOU = 0.8
# Change outside the tracked masks: a low-resolution cell changed when a channel moved by more than
# DIFF_LEVEL (of 255; sensor and compression noise stay under it). Where no tracked object is or
# was a sample ago, blocks of BLOCK x BLOCK cells with at least NEW_CELLS changed cells get a
# prompt; when over CUT of the frame changed, the camera cut or moved: automatic masks everywhere.
DIFF_LEVEL = 24
BLOCK = 8
NEW_CELLS = 6
CUT = 0.3
# Masks found from change prompts that overlap each other this much (IoU) are one object.
NMS_IOU = 0.7
# A mask over this share of the frame is the background (or a wall, a sky): it neither explains a
# change (everything happens in front of it) nor calls for automatic masks when it is lost.
BACKGROUND = 0.5
# An automatic mask that a carried mask covers this much is that track's object, not a new one.
COVERED = 0.5


def interior_point(mask: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of a pixel deepest inside the mask (the last to go when it is eroded step by step,
    the one nearest their centre), None for an empty mask. Masks here are low resolution (~96 px),
    so the erosion takes at most a few dozen array passes."""
    if not mask.any():
        return None
    cur = mask
    while True:
        inner = cur.copy()
        inner[1:, :] &= cur[:-1, :]
        inner[:-1, :] &= cur[1:, :]
        inner[:, 1:] &= cur[:, :-1]
        inner[:, :-1] &= cur[:, 1:]
        inner[0, :] = inner[-1, :] = False
        inner[:, 0] = inner[:, -1] = False
        if not inner.any():
            break
        cur = inner
    ys, xs = np.nonzero(cur)
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(xs[k]), int(ys[k])


def match_motion(prev: np.ndarray, cur: np.ndarray, mask: np.ndarray, guess: tuple[int, int]) -> tuple[int, int]:
    """Where the masked part of ``prev`` (low-resolution RGB) went in ``cur``: the offset within
    ``SEARCH`` object sizes of ``guess`` whose pixels differ least (mean absolute difference over
    up to MATCH_CELLS of the mask's cells; every second offset, then the best one's neighbours).
    A velocity is only a guess, and a track seen once has none; a small object moves by more than
    its size between samples, so a prompt at its old place misses."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return guess
    if len(ys) > MATCH_CELLS:
        pick = np.linspace(0, len(ys) - 1, MATCH_CELLS).astype(np.int64)
        ys, xs = ys[pick], xs[pick]
    h, w = mask.shape
    want = prev[ys, xs].astype(np.int16)  # cells x 3

    def best(dx: np.ndarray, dy: np.ndarray) -> tuple[int, int]:
        ty, tx = ys[None, :] + dy[:, None], xs[None, :] + dx[:, None]  # offsets x cells
        inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        got = cur[np.clip(ty, 0, h - 1), np.clip(tx, 0, w - 1)].astype(np.int16)  # offsets x cells x 3
        cost = np.abs(got - want[None]).sum(-1, dtype=np.int32)
        cost[~inside] = 3 * 255  # leaving the frame costs as much as the worst match
        score = cost.mean(1) + 1e-3 * (np.abs(dy - guess[1]) + np.abs(dx - guess[0]))
        k = int(np.argmin(score))
        return int(dx[k]), int(dy[k])

    r = int(np.clip(SEARCH * np.sqrt(mask.sum()), 4, max(h, w) // 4))
    d = np.arange(-r, r + 1, 2)
    dy, dx = (a.reshape(-1) for a in np.meshgrid(d + guess[1], d + guess[0], indexing="ij"))
    cx, cy = best(dx, dy)
    d = np.arange(-1, 2)
    dy, dx = (a.reshape(-1) for a in np.meshgrid(d + cy, d + cx, indexing="ij"))
    return best(dx, dy)


def unchanged(diff: np.ndarray, mask: np.ndarray) -> bool:
    """Whether nothing changed on an object's low-resolution mask or next to it (``diff``: the
    cells that changed since the last sample): then it is where it was, and SAM need not look."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return bool(mask.any()) and not diff[grown].any()


def changed_cells(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Low-resolution cells whose colour moved by more than DIFF_LEVEL in a channel."""
    return np.abs(cur.astype(np.int16) - prev.astype(np.int16)).max(-1) > DIFF_LEVEL


class Propagator:
    """Carries tracks across frames with the library's SAM (either family), batched per frame."""

    def __init__(self, sam):
        from segsearch.models.sam import image_predictor, is_sam2

        self.sam2 = is_sam2(sam)
        self.pred = image_predictor(sam)
        self._frame = None  # the frame whose embedding the predictor holds
        self._grid = None  # its decoder

    def carry(self, rgb: np.ndarray, lasts: list[np.ndarray], shifts: list[tuple[int, int]], stride: int):
        """Masks on ``rgb`` for the tracks whose last masks (low resolution, every ``stride`` pixels)
        are ``lasts`` and whose motion since is guessed as ``shifts`` (low-res pixels): the carried
        masks and, aligned, the indices of the tracks they carry."""
        import torch

        h, w = rgb.shape[:2]
        points, owner = [], []
        for i, (last, (dx, dy)) in enumerate(zip(lasts, shifts)):
            # where the motion says it is, and where it was (a guessed velocity can be wrong)
            inner = interior_point(last)
            for p in {_moved(inner, dx, dy), inner}:
                if p is not None:
                    points.append((min(w - 1, (p[0] + 0.5) * stride), min(h - 1, (p[1] + 0.5) * stride)))
                    owner.append(i)
        if not points:
            return MaskSet.empty(h, w), []
        grid = lasts[0].shape
        with torch.inference_mode():
            self._set(rgb)
            low, scores, small = self._decode(np.asarray(points, np.float32), (h, w), grid)
            best: dict[int, tuple[float, int, int]] = {}  # track -> (fit, prompt row, output)
            for row, i in enumerate(owner):
                for k in range(small.shape[1]):
                    fit = _shape_fit(small[row, k], lasts[i], shifts[i])
                    if fit >= CARRY_IOU and scores[row, k] >= CARRY_SCORE and fit > best.get(i, (-1.0,))[0]:
                        best[i] = (fit, row, k)
            keep = sorted(best)
            if not keep:
                return MaskSet.empty(h, w), []
            picks = [best[i][1:] for i in keep]
            chosen = torch.stack([low[r, k] for r, k in picks])
            carried = MaskSet.from_masks(
                self._full(chosen, (h, w)),
                [scores[r, k] for r, k in picks],
                [_stability(chosen[j].float().cpu().numpy()) for j in range(len(picks))],
            )
        return _one_per_object(carried, keep, stride)

    def discover(self, rgb: np.ndarray, cells: list[tuple[int, int]], stride: int, thresholds) -> MaskSet:
        """Masks where the picture changed: a point prompt at each low-resolution cell, each
        answer's best output kept as the automatic generator keeps masks (``thresholds``: its
        predicted-IoU and stability thresholds), one per object (overlapping answers: the best)."""
        import torch

        h, w = rgb.shape[:2]
        if not cells:
            return MaskSet.empty(h, w)
        pts = np.asarray([(min(w - 1, (x + 0.5) * stride), min(h - 1, (y + 0.5) * stride)) for x, y in cells])
        grid = (-(-h // stride), -(-w // stride))
        iou_min, stab_min = thresholds
        with torch.inference_mode():
            self._set(rgb)
            low, scores, small = self._decode(pts.astype(np.float32), (h, w), grid)
            logits = low.float().cpu().numpy()
            found = []  # (score, row, output)
            for row in range(len(pts)):
                stab = [_stability(logits[row, k]) for k in range(logits.shape[1])]
                ok = [k for k in range(logits.shape[1]) if scores[row, k] > iou_min and stab[k] >= stab_min]
                if ok:
                    k = max(ok, key=lambda k: scores[row, k])
                    found.append((float(scores[row, k]), row, k, stab[k]))
            found.sort(key=lambda f: -f[0])
            cand = np.stack([small[r, k] for _, r, k, _ in found]) if found else np.zeros((0, *grid), bool)
            iou = mask_iou(cand, cand)
            keep = [i for i in range(len(found)) if not any(iou[i, j] >= NMS_IOU for j in range(i))]
            if not keep:
                return MaskSet.empty(h, w)
            chosen = torch.stack([low[found[i][1], found[i][2]] for i in keep])
            return MaskSet.from_masks(
                self._full(chosen, (h, w)), [found[i][0] for i in keep], [found[i][3] for i in keep]
            )

    def _set(self, rgb: np.ndarray) -> None:
        """The frame's image embedding (and its grid decoder), once per frame whoever asks first."""
        from segsearch.indexer.fast_encoder import set_image
        from segsearch.indexer.grid_decoder import GridDecoder

        if self._frame is not rgb:
            pred = self.pred
            if self.sam2:
                pred.set_image(rgb)
                feats = pred._features
                self._grid = GridDecoder(
                    pred.model, feats["image_embed"][-1:], [f[-1:] for f in feats["high_res_feats"]]
                )
            else:
                set_image(pred, rgb)
                self._grid = GridDecoder(pred.model, pred.features)
            self._frame = rgb

    def _decode(self, points: np.ndarray, size: tuple[int, int], grid: tuple[int, int]):
        """Multimask outputs for one positive point each, without upsampling them all: low-res
        logits (P x 3 x L x L), predicted IoUs (P x 3, numpy) and the masks on the tracker's grid
        (P x 3 x gh x gw bool, numpy; from the logits over the frame, bilinear, for choosing)."""
        import torch
        import torch.nn.functional as F

        pred = self.pred
        coords = torch.as_tensor(points[:, None, :])
        labels = torch.ones(len(points), 1, dtype=torch.int)
        # the fast engine's decoder: the official decoder's outputs, per-image work done once
        if self.sam2:
            coords = pred._transforms.transform_coords(coords, normalize=True, orig_hw=size)
            sparse, _ = pred.model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            low, iou, _ = self._grid(sparse)
            framed = low  # SAM 2 stretches the frame over its whole input square
        else:
            model = pred.model
            coords = pred.transform.apply_coords_torch(coords, size)
            sparse, _ = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            low, iou, _ = self._grid(sparse)
            side = model.image_encoder.img_size
            ih, iw = pred.input_size  # the frame inside SAM's padded square
            framed = low[..., : -(-ih * low.shape[-2] // side), : -(-iw * low.shape[-1] // side)]
        small = F.interpolate(framed.float(), size=grid, mode="bilinear", align_corners=False) > 0
        return low, iou.float().cpu().numpy(), small.cpu().numpy()

    def _full(self, low, size: tuple[int, int]) -> np.ndarray:
        """Chosen low-res logits (K x L x L) -> K x H x W bool masks on the frame."""
        pred = self.pred
        if self.sam2:
            up = pred._transforms.postprocess_masks(low[:, None], size)
        else:
            up = pred.model.postprocess_masks(low[:, None], pred.input_size, pred.original_size)
        return (up[:, 0] > 0).cpu().numpy()


def _moved(p, dx: int, dy: int):
    return None if p is None else (p[0] + dx, p[1] + dy)


def _centroid(m: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(m)
    return float(xs.mean()), float(ys.mean())


def _shape_fit(cand: np.ndarray, last: np.ndarray, shift: tuple[int, int]) -> float:
    """How well a candidate continues a track: its IoU with the last mask moved onto the
    candidate's centre (the same shape, wherever it went), 0 when the areas differ by more than
    CARRY_AREA or the candidate lies farther from where the motion puts the object than
    MAX_JUMP object sizes."""
    a, b = int(cand.sum()), int(last.sum())
    if not a or not b or not 1 / CARRY_AREA <= a / b <= CARRY_AREA:
        return 0.0
    (cx, cy), (lx, ly) = _centroid(cand), _centroid(last)
    if np.hypot(cx - lx - shift[0], cy - ly - shift[1]) > MAX_JUMP * np.sqrt(b) + 2:
        return 0.0
    moved = shift_mask(last, int(round(cx - lx)), int(round(cy - ly)))
    inter = int((moved & cand).sum())
    return inter / (a + int(moved.sum()) - inter or 1)


def _stability(logits: np.ndarray, offset: float = 1.0) -> float:
    """SAM's stability score of one mask's logits: IoU of the masks thresholded at +-offset."""
    hi = int((logits > offset).sum())
    lo = int((logits > -offset).sum())
    return hi / lo if lo else 0.0


def _one_per_object(carried: MaskSet, keep: list[int], stride: int) -> tuple[MaskSet, list[int]]:
    """Where two tracks carried onto one object, the one listed first (the older) keeps it."""
    small = carried.masks[:, ::stride, ::stride]
    iou = mask_iou(small, small)
    drop = set()
    for a in range(len(keep)):
        if a in drop:
            continue
        for b in range(a + 1, len(keep)):
            if iou[a, b] >= SAME_OBJECT_IOU:
                drop.add(b)
    rows = [r for r in range(len(keep)) if r not in drop]
    return carried.filter(np.asarray(rows, np.int64)), [keep[r] for r in rows]


class Keyframes:
    """Decides, frame by frame, where SAM looks for new objects (see the module docstring)."""

    def __init__(self, refresh_s: float):
        self.refresh_s = refresh_s
        self.last_auto: float | None = None
        self.prev_tracked: np.ndarray | None = None
        self.counts: dict[str, int] = {}

    def plan(self, t: float, changed: np.ndarray | None, tracked: np.ndarray) -> tuple[str, list[tuple[int, int]]]:
        """("auto", []) for automatic masks, ("prompts", cells) for prompts at those low-resolution
        cells (x, y), or ("none", []). ``changed``: the cells that changed since the last sample
        (``changed_cells``; None on the first); ``tracked``: the union of this frame's carried
        object masks there. Call once per sampled frame, in order."""
        how, cells = "none", []
        if self.last_auto is None or changed is None:
            how = "auto"  # the first frame
        elif t - self.last_auto >= self.refresh_s - 1e-6:
            how = "auto"  # a periodic look at everything
        elif changed.mean() > CUT:
            how = "auto"  # a cut or a camera move
        else:
            cells = _changed_blocks(changed & ~(tracked | self.prev_tracked))
            how = "prompts" if cells else "none"
        self.prev_tracked = tracked
        if how == "auto":
            self.last_auto = t
        self.counts[how] = self.counts.get(how, 0) + 1
        return how, cells


def _changed_blocks(new: np.ndarray) -> list[tuple[int, int]]:
    """One cell (x, y) per BLOCK x BLOCK block with at least NEW_CELLS changed cells: the changed
    cell nearest the block's changed cells' centre."""
    out = []
    h, w = new.shape
    for y0 in range(0, h, BLOCK):
        for x0 in range(0, w, BLOCK):
            ys, xs = np.nonzero(new[y0 : y0 + BLOCK, x0 : x0 + BLOCK])
            if len(ys) >= NEW_CELLS:
                k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
                out.append((x0 + int(xs[k]), y0 + int(ys[k])))
    return out


def new_objects(auto: MaskSet, tracked: np.ndarray | None, stride: int) -> MaskSet:
    """The automatic masks that no tracked object's low-resolution mask (``tracked``: K x h x w,
    every ``stride`` pixels; None for none) already covers by ``COVERED`` of their area."""
    if not len(auto) or tracked is None or not len(tracked):
        return auto
    a = auto.masks[:, ::stride, ::stride].reshape(len(auto), -1).astype(np.float32)
    c = tracked.reshape(len(tracked), -1).astype(np.float32)
    covered = (a @ c.T) / np.maximum(a.sum(1), 1.0)[:, None]
    return auto.filter(covered.max(1) < COVERED)
