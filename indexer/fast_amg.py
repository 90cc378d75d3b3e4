"""Fast automatic mask generation: the reference algorithm, reordered so the expensive work is
done only for masks that survive.

The official ``SamAutomaticMaskGenerator`` upsamples *every* decoded mask (3 per prompt, 3,072
for a 32×32 grid) to the full image resolution before it filters anything, then computes
stability, boxes and RLE at full resolution. Here the same model, prompts and settings are used,
but:

1. the image is encoded once per crop (the official ``SamPredictor``'s preprocessing and the
   model's encoder modules, with fused attention: :mod:`~segsearch.indexer.fast_encoder`,
   embeddings equal up to float rounding) and the prompts are decoded in batches by
   :class:`~segsearch.indexer.grid_decoder.GridDecoder` (SAM's own decoder modules, with the
   per-image part of the first layer computed once, fused attention, and the mask head run only
   for masks above the predicted-IoU threshold and only where their logits are read), keeping the
   low-resolution logits (256×256 for ViT-B/L/H) and the predicted IoUs; on a CPU the batches run
   side by side, one per core;
2. each batch is screened while it is in cache: the stability score estimated on the
   low-resolution logits (candidates surely below the threshold dropped) and guaranteed inner and
   outer full-resolution boxes derived from the interpolation weights;
3. greedy box NMS runs on those bounds, computing an exact full-resolution box (over the mask's
   region only) when the bounds cannot decide; the stability filter, which the reference applies
   before NMS, is decided only for candidates that no kept box suppresses (a dropped candidate
   suppresses nothing): scores within the measured low-resolution error of the threshold are
   re-scored at the input frame, then at full resolution, so the keep/drop decisions match the
   reference's (at SAM's defaults, 58 of 1,692 candidates per shapes scene are scored at all);
4. only the survivors (tens, not thousands) are upsampled with the model's own
   ``postprocess_masks`` — bit-for-bit the reference's interpolation — thresholded, and scored
   for stability from those logits, as the reference scores them (masks on an inner crop edge
   were already dropped before NMS, on the same exact boxes).

Crop layers, crop NMS and small-region clean-up follow the reference exactly (its own helpers).
Output: a :class:`~segsearch.masks.MaskSet` in canonical order, like the reference engine.
"""

from __future__ import annotations

import numpy as np

from segsearch.masks import MaskSet

from segsearch.indexer.fast_encoder import set_image
from segsearch.indexer.grid_decoder import GridDecoder
from segsearch.indexer.mask_bounds import BoxBounds


class FastAMG(BoxBounds):
    name = "fast"
    LOW_RES_ERR = 0.12  # stability estimate errors allowed at low resolution and at the input
    INPUT_ERR = 0.02  # frame (see _LazyStability)
    BOUNDS_CHUNK = 16  # candidates per step of the box-bound computations (cache-sized)
    # Full-resolution float32 logits held at once when masks are upsampled (survivors, and the
    # stability scores decided at full resolution): 256 MB. A 1 MP image upsamples 32 candidates per
    # step as before; a 48 MP one, one at a time (a batch of 32 was 6 GB). Results are identical:
    # each candidate is interpolated on its own either way.
    UPSAMPLE_BYTES = 256 << 20

    def __init__(
        self,
        sam,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        decode_batch: int | None = None,
        autocast: bool | None = None,
        prompts: str = "grid",
        prompt_similarity: float | None = None,
    ):
        """The reference generator's parameters (``points_per_batch`` is accepted for the same
        signature; the decoder batch is ``decode_batch``, see :func:`_decode_batch`)."""
        from segment_anything import SamPredictor
        from segment_anything.utils.amg import build_all_layer_point_grids

        self.sam = sam
        self.predictor = SamPredictor(sam)
        self.point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        device = next(sam.parameters()).device
        # the decoder batch is a speed knob only (results do not depend on it); None: a GPU
        # gets large batches, a CPU batches whose per-prompt image tensors stay in cache
        self.decode_batch = int(decode_batch) if decode_batch else None
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.autocast = (device.type == "cuda") if autocast is None else autocast
        self.prompts = prompts  # "grid": every grid point; "adaptive": coarse to fine (indexer/prompts.py)
        from segsearch.indexer.prompts import SIMILARITY

        self.prompt_similarity = SIMILARITY if prompt_similarity is None else prompt_similarity
        self.prompts_decoded = 0  # prompts decoded by the last generate()
        self.timings: dict[str, float] = {}

    # --- public -------------------------------------------------------------------------------
    def generate(self, rgb: np.ndarray) -> MaskSet:
        import torch
        from segment_anything.utils.amg import MaskData, generate_crop_boxes
        from torchvision.ops.boxes import batched_nms, box_area

        self.timings = {"encoder": 0.0, "decoder": 0.0, "postprocess": 0.0}
        self.prompts_decoded = 0
        orig_size = rgb.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data = MaskData()
        with torch.inference_mode():
            for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
                data.cat(self._process_crop(rgb, crop_box, layer_idx, orig_size))
            if len(crop_boxes) > 1 and len(data["boxes"]):
                scores = 1 / box_area(data["crop_boxes"]).float()
                keep = batched_nms(
                    data["boxes"].float(), scores, torch.zeros(len(data["boxes"])), iou_threshold=self.crop_nms_thresh
                )
                data.filter(keep)
        if "masks" not in data._stats or len(data["masks"]) == 0:
            return MaskSet.empty(*orig_size)
        masks = data["masks"].cpu().numpy()
        iou, stab = data["iou_preds"].float().cpu().numpy(), data["stability_score"].float().cpu().numpy()
        if self.min_mask_region_area > 0:
            from segsearch.indexer.amg import clean_small_regions

            nms = max(self.box_nms_thresh, self.crop_nms_thresh)
            masks, iou, stab = clean_small_regions(masks, iou, stab, self.min_mask_region_area, nms)
        return MaskSet.from_masks(masks, iou, stab).sort_canonical()

    # --- stages -------------------------------------------------------------------------------
    def _process_crop(self, rgb, crop_box, layer_idx, orig_size):
        import time

        import torch
        from segment_anything.utils.amg import MaskData

        sam, pred = self.sam, self.predictor
        x0, y0, x1, y1 = crop_box
        crop = rgb[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        t0 = time.perf_counter()
        with self._autocast():
            set_image(pred, crop)
        t1 = time.perf_counter()
        self.timings["encoder"] += t1 - t0

        points = self.point_grids[layer_idx] * np.array(crop_size)[None, ::-1]
        with self._autocast():
            decoder = GridDecoder(sam, pred.features, needed=self._needed_low_res(pred.features))
        batch = self.decode_batch or _decode_batch(pred.features, decoder.factored is not None)
        screen_s = []
        frame = pred.transform.apply_coords(points, crop_size)  # (x, y) in the encoder's input frame
        selector = self._selector(frame, pred.features)

        def work(ids):
            coords = torch.as_tensor(frame[ids], dtype=torch.float, device=pred.device)
            labels = torch.ones(len(ids), 1, dtype=torch.int, device=pred.device)
            with torch.inference_mode(), self._autocast():
                sparse, _ = sam.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
                # only the masks above the predicted-IoU threshold come back
                low, iou, prompt = decoder.candidates(sparse, self.pred_iou_thresh, with_prompts=True)
                ts = time.perf_counter()
                part = self._screen(low.float(), iou.float(), crop_size, torch.as_tensor(ids)[prompt.cpu()])
            screen_s.append(time.perf_counter() - ts)
            return part

        parts, workers = [], 1
        for idx in selector.levels():  # the whole grid, or coarse to fine (indexer/prompts.py)
            chunks = [idx[i : i + batch] for i in range(0, len(idx), batch)]
            workers = _batch_workers(pred.device, len(chunks))
            level = _map_single_threaded(work, chunks, workers) if workers > 1 else [work(c) for c in chunks]
            for part in level:
                selector.observe(part["prompt"], part["low"])
            parts += level
        self.prompts_decoded += int(selector.decoded.sum())
        t2 = time.perf_counter()
        screen = sum(screen_s) / workers  # (the screening runs in the decoder's workers)
        self.timings["decoder"] += t2 - t1 - screen
        self.timings["postprocess"] += screen
        try:
            rows = _Rows([part.pop("low") for part in parts])
            data = MaskData(**{k: torch.cat([part[k] for part in parts]) for k in parts[0]})
            return self._postprocess(rows, data, crop_box, crop_size, orig_size)
        finally:
            self.timings["postprocess"] += time.perf_counter() - t2

    def _needed_low_res(self, features):
        """Low-resolution rows and columns that anything reads: the input frame covers the top-left
        ``input_size`` of SAM's padded square, and each of its pixels reads the two low-resolution
        rows/columns it lies between; one more for the inner box bound's neighbourhood (reach 1)."""
        from segsearch.indexer.mask_bounds import _taps

        img = self.sam.image_encoder.img_size
        out = []
        for n_low, n_in in zip((4 * features.shape[-2], 4 * features.shape[-1]), self.predictor.input_size):
            h, _ = _taps(n_low, img, "cpu")
            out.append(min(n_low, int(h[:n_in].max()) + 3))
        return tuple(out)

    def _selector(self, frame, features):
        """The prompt selection for one crop's grid (``frame``: its points in the input frame,
        which is the top left of the padded square the embedding covers)."""
        from segsearch.indexer.prompts import selector_for

        img = self.sam.image_encoder.img_size
        return selector_for(frame / img, features[0], self.prompts, self.prompt_similarity, self.sam.mask_threshold)

    def _screen(self, low, iou, crop_size, prompt) -> dict:
        """One decoder batch's candidates, while their logits are in cache: the low-resolution
        stability estimate (candidates surely below the threshold are dropped, as the reference
        drops them) and the inner and outer box bounds NMS decides with."""
        from segment_anything.utils.amg import calculate_stability_score

        sam, pred = self.sam, self.predictor
        # Low-resolution view of the valid (unpadded) input area.
        in_h, in_w = pred.input_size
        lh, lw = low.shape[-2:]
        img = sam.image_encoder.img_size
        vh, vw = max(1, round(in_h * lh / img)), max(1, round(in_w * lw / img))
        est = calculate_stability_score(low[:, :vh, :vw], sam.mask_threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0:
            keep = est > self.stability_score_thresh - self.LOW_RES_ERR
            if not bool(keep.all()):
                low, iou, est, prompt = low[keep], iou[keep], est[keep], prompt[keep.cpu()]
        host = low.cpu()  # (the bounds and NMS decisions run on the CPU)
        return {
            "low": low,
            "prompt": prompt,
            "iou_preds": iou,
            "est": est,
            "outer": self._outer_boxes(host, crop_size).double(),
            "inner": self._inner_boxes(host, crop_size).double(),
        }

    def _postprocess(self, rows, data, crop_box, crop_size, orig_size):
        """NMS and full-resolution masks for one crop's screened candidates (``_screen``): their
        low-resolution logits ``rows``, and ``data`` with the rest."""
        import torch
        from segment_anything.utils.amg import (
            MaskData,
            batched_mask_to_box,
            calculate_stability_score,
            uncrop_boxes_xyxy,
            uncrop_masks,
        )

        thr, off = self.sam.mask_threshold, self.stability_score_offset
        if len(rows) == 0:
            return MaskData()

        # NMS on the exact full-resolution boxes, computed from the low-resolution logits only
        # over each mask's bounding region (not the whole image), with the stability filter
        # decided only for the candidates NMS reaches.
        # (on the CPU: a few branchy decisions per candidate, which a GPU would serialize anyway)
        stable = _LazyStability(self, rows, data["est"], crop_size)
        bounds = data["outer"].numpy(), data["inner"].numpy()
        keep = self._nms(rows, data["iou_preds"].cpu(), bounds, crop_box, orig_size, crop_size, stable)
        for k in ("est", "outer", "inner", "prompt"):
            del data[k]
        data.filter(keep)
        if len(keep) == 0:
            return MaskData()
        low = rows[keep]
        del rows

        # Only the survivors go to full resolution, exactly as the reference interpolates them.
        # Their stability scores are computed here from the same logits, as the reference does.
        step = self._upsample_step(crop_size)
        masks, stab = [], []
        for j in range(0, len(low), step):
            up = self._upsample(low[j : j + step], crop_size)
            stab.append(calculate_stability_score(up, thr, off))
            masks.append(up > thr)
            del up
        masks = torch.cat(masks)
        data["stability_score"] = torch.cat(stab)
        # (crop-edge masks were already dropped in _nms, on these same exact boxes)
        orig_h, orig_w = orig_size
        data["masks"] = uncrop_masks(masks, crop_box, orig_h, orig_w).cpu()
        data["boxes"] = uncrop_boxes_xyxy(batched_mask_to_box(masks), crop_box).cpu()
        data["iou_preds"] = data["iou_preds"].cpu()
        data["stability_score"] = data["stability_score"].cpu()
        data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["masks"]))])
        return data

    def _nms(self, low, scores, bounds, crop_box, orig_size, crop_size, stable):
        """Greedy box NMS with the reference's result, computing exact full-resolution boxes only
        where the decision depends on them.

        Each candidate's exact box lies between an inner and an outer box (both guaranteed); a
        comparison is decided from the bounds when the IoU interval lies on one side of the
        threshold, otherwise the exact box is computed.
        Kept boxes are always exact (they are the output).

        The reference filters by stability before NMS; a candidate is kept only if it passes both
        and a dropped one suppresses nothing, so the stability decision is needed only for the
        candidates that no kept box suppresses: ``stable(i, ahead)`` makes it then (see
        ``_LazyStability``). Most candidates repeat a kept mask and are never scored."""
        import torch
        from segment_anything.utils.amg import is_box_near_crop_edge

        thr_iou = self.box_nms_thresh
        outer, inner = bounds  # (inner: -1s where no pixel is sure, zero area below)
        orig_h, orig_w = orig_size
        check_edge = list(crop_box) != [0, 0, orig_w, orig_h]
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        kept: list[int] = []
        kept_boxes = np.zeros((0, 4))
        exact: dict[int, np.ndarray] = {}

        def exact_box(i):
            if i not in exact:
                exact[i] = self._exact_boxes(low[i : i + 1].cpu(), crop_size)[0].double().numpy()
            return exact[i]

        def area(b):
            return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)

        def inter(a, b):
            w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
            h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
            return w * h

        def iou(a, b):
            i = inter(a, b)
            return i / np.maximum(area(a) + area(b) - i, 1e-9)

        alive = np.ones(len(outer), bool)
        for k, i in enumerate(order):
            if not alive[i]:
                continue
            if check_edge:  # the reference drops masks touching an inner crop edge before NMS
                e = torch.as_tensor(exact_box(i))[None]
                if bool(is_box_near_crop_edge(e, crop_box, [0, 0, orig_w, orig_h])[0]):
                    continue
            if len(kept):
                if i in exact:
                    suppressed = bool((iou(exact[i], kept_boxes) > thr_iou).any())
                else:
                    o, n = outer[i], inner[i]
                    ak = area(kept_boxes)
                    hi = inter(o, kept_boxes) / np.maximum(area(n) + ak - inter(n, kept_boxes), 1e-9)
                    lo = inter(n, kept_boxes) / np.maximum(area(o) + ak - inter(o, kept_boxes), 1e-9)
                    if (lo > thr_iou).any():
                        suppressed = True
                    elif (hi <= thr_iou).all():
                        suppressed = False
                    else:
                        suppressed = bool((iou(exact_box(i), kept_boxes) > thr_iou).any())
                if suppressed:
                    continue
            if not stable(i, (j for j in order[k + 1 :] if alive[j])):
                continue
            kept.append(i)
            e = exact_box(i)
            kept_boxes = np.vstack([kept_boxes, e[None]])
            # every candidate that this kept box surely suppresses (IoU lower bound above the
            # threshold) is settled at once, so the loop only visits the few that are not
            lo_all = inter(inner, e) / np.maximum(area(outer) + area(e) - inter(outer, e), 1e-9)
            alive &= ~(lo_all > thr_iou)
        return torch.as_tensor(kept, dtype=torch.long)

    def _upsample_step(self, crop_size) -> int:
        """Candidates upsampled together: at most 32, and at most UPSAMPLE_BYTES of float32 logits."""
        return int(max(1, min(32, self.UPSAMPLE_BYTES // (4 * crop_size[0] * crop_size[1]))))

    def _upsample(self, low, crop_size):
        return self.sam.postprocess_masks(low[:, None], self.predictor.input_size, crop_size)[:, 0]

    def _autocast(self):
        import contextlib

        import torch

        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


class _LazyStability:
    """SAM's stability filter (score >= threshold), decided per candidate when NMS asks.

    The low-resolution estimate is within ``LOW_RES_ERR`` of the full-resolution score (measured:
    max 0.07 on shapes-world candidates) and decides the candidates farther than that from the
    threshold. The others are scored at the padded input frame (within ``INPUT_ERR`` of full
    resolution, measured max 0.01), and only those still that close at full resolution. Each
    request scores the asked candidate together with the next undecided ones NMS may reach
    (``BATCH``), so the per-cell counting runs on batches, not one map at a time."""

    BATCH = 16

    def __init__(self, gen, low, est, crop_size):
        import numpy as np

        self.gen, self.low, self.crop_size = gen, low, crop_size  # low: _Rows or a tensor
        t = gen.stability_score_thresh
        e = est.float().cpu().numpy()
        # 1: passes, 0: fails, -1: not decided yet
        self.state = np.where(e >= t + gen.LOW_RES_ERR, 1, -1).astype(np.int8) if t > 0 else np.ones(len(e), np.int8)

    def __call__(self, i: int, ahead) -> bool:
        import itertools

        if self.state[i] < 0:
            more = itertools.islice((j for j in ahead if self.state[j] < 0), self.BATCH - 1)
            self._decide([i, *more])
        return bool(self.state[i])

    def _decide(self, idx: list[int]) -> None:
        import torch

        g = self.gen
        t, thr, off = g.stability_score_thresh, g.sam.mask_threshold, g.stability_score_offset
        at = torch.as_tensor(idx)
        s = g._input_frame_stability(self.low, at, thr, off).cpu()
        close = (s - t).abs() < g.INPUT_ERR
        if bool(close.any()):
            s[close] = g._full_stability(self.low, at[close], self.crop_size, thr, off).cpu()
        self.state[idx] = (s >= t).numpy()


class _Rows:
    """The candidates' low-resolution logits, kept in the decoder batches they came in (joining
    them was a 110 MB copy per shapes scene, 3% of the fast engine's time); NMS, the stability
    checks and the survivors take rows by index."""

    def __init__(self, parts):
        import torch

        self.parts = [p for p in parts if len(p)]
        sizes = torch.tensor([0] + [len(p) for p in self.parts])
        self.starts = torch.cumsum(sizes, 0)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key):
        import torch

        if isinstance(key, slice):
            key = range(*key.indices(len(self)))
        idx = torch.as_tensor(key, dtype=torch.long).reshape(-1).cpu()
        part = torch.searchsorted(self.starts, idx, right=True) - 1
        local = idx - self.starts[part]
        return torch.stack([self.parts[p][j] for p, j in zip(part.tolist(), local.tolist())])


def _batch_workers(device, batches: int) -> int:
    """Decoder batches run side by side on a CPU, one per intra-op thread, each single-threaded:
    its per-prompt tensors then stay in its own core's cache, and the screening of one batch
    overlaps the decoding of the next (at 2 threads on the bundled SAM the decoder gained 1.76x
    from the second core with threads inside each operation)."""
    import torch

    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), batches))


def _map_single_threaded(fn, items, workers: int) -> list:
    """``[fn(x) for x in items]`` on ``workers`` threads, each running PyTorch single-threaded
    (``torch.set_num_threads`` is per thread for OpenMP; the process-wide default it also sets is
    put back afterwards)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    n = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(n)


def _decode_batch(features, factored: bool = False) -> int:
    """Prompts per decoder call: 256 on a GPU; on a CPU, as many as keep one per-prompt copy of
    the image embedding at ~4 MB, so the passes over them stay in cache (16 for the bundled tiny
    SAM: 1.61 s per 1,024 prompts against 2.09 s at 64; ViT-B, 2: 39 ms per prompt at 1 to 4).
    A factored decoder (indexer/factored.py) keeps ~2 MB per prompt: 4 (ViT-B on one thread:
    16.4 ms per prompt at 2, 15.0 at 4, 28 at 64)."""
    if features.device.type == "cuda":
        return 256
    if factored:
        return 4
    return max(2, min(64, (1 << 20) // features[0].numel()))
