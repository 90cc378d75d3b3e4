"""Fast automatic mask generation for SAM 2 / 2.1: ``SAM2AutomaticMaskGenerator``'s algorithm,
reordered as :mod:`~segsearch.indexer.fast_amg` does for SAM 1, so full-resolution work is done
only for candidates that can survive.

The official generator decodes every grid prompt (3 masks each, 3,072 for a 32x32 grid), upsamples
*all* of them to the image's resolution, and only then filters by predicted IoU and stability.
Here, with the same model, prompts and settings:

1. the image is encoded once per crop by ``SAM2ImagePredictor.set_image`` (the package's own
   preprocessing and feature maps), and the prompts are decoded in batches by the model's own
   prompt encoder and mask decoder (with the high-resolution features), keeping the
   low-resolution logits;
2. the predicted-IoU filter runs on the decoder's scores before any upsampling (the same numbers
   the reference filters on);
3. the stability score is estimated on the low-resolution logits, and a candidate is dropped
   there only when the estimate is more than ``LOW_RES_ERR`` below the threshold; for every other
   candidate the full-resolution stability score and box (``SAM2Transforms.postprocess_masks``'s
   one bilinear step) are counted per low-resolution cell (``mask_bounds``), scores within
   ``CLOSE`` of the threshold re-scored on the upsampled map itself;
4. box NMS, crop NMS and the output follow the reference with its own helpers, and only NMS
   survivors are upsampled (tens of maps, not hundreds), so the work follows the masks' outlines,
   not the photo's pixels, and kept masks, scores and boxes are the reference's.

The small-region clean-up is segsearch's (:func:`~segsearch.indexer.amg.clean_small_regions`, the
same for both families and every device; the package's low-resolution hole filling needs its CUDA
extension and is skipped without it, so it is never used here).
"""

from __future__ import annotations

import numpy as np

from segsearch.masks import MaskSet

from segsearch.indexer.fast_amg import _batch_workers, _decode_batch, _map_single_threaded


class FastAMG2:
    name = "fast"
    LOW_RES_ERR = 0.12  # stability estimate error allowed before a low-resolution drop (see module doc)
    # Full-resolution float32 logits held at once while upsampling: 256 MB, as the SAM 1 engine
    UPSAMPLE_BYTES = 256 << 20
    # Per-cell stability scores this close to the threshold are re-scored on the upsampled map: a
    # per-cell count can differ from the kernel's by a pixel (measured: 8e-6 of the score)
    CLOSE = 1e-3

    def __init__(
        self,
        sam,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        multimask_output: bool = True,
        prompts: str = "grid",
        prompt_similarity: float | None = None,
    ):
        """``SAM2AutomaticMaskGenerator``'s parameters (``use_m2m`` is not supported)."""
        from sam2.utils.amg import build_all_layer_point_grids

        from segsearch.models.sam import image_predictor

        self.sam = sam
        self.predictor = image_predictor(sam)
        self.point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.mask_threshold = mask_threshold
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.multimask_output = multimask_output
        from segsearch.indexer.prompts import SIMILARITY

        self.prompts = prompts  # "grid": every grid point; "adaptive": coarse to fine (indexer/prompts.py)
        self.prompt_similarity = SIMILARITY if prompt_similarity is None else prompt_similarity
        self.prompts_decoded = 0  # prompts decoded by the last generate()
        self.timings: dict[str, float] = {}

    def generate(self, rgb: np.ndarray) -> MaskSet:
        import torch
        from sam2.utils.amg import MaskData, generate_crop_boxes
        from torchvision.ops.boxes import batched_nms, box_area

        from segsearch.indexer.amg import clean_small_regions

        self.timings = {"encoder": 0.0, "decoder": 0.0, "postprocess": 0.0}
        self.prompts_decoded = 0
        orig_size = rgb.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data = MaskData()
        with torch.inference_mode():
            for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
                data.cat(self._process_crop(rgb, crop_box, layer_idx, orig_size))
            if len(crop_boxes) > 1 and "boxes" in data._stats and len(data["boxes"]):
                scores = 1 / box_area(data["crop_boxes"]).float()
                keep = batched_nms(
                    data["boxes"].float(), scores, torch.zeros(len(data["boxes"])), iou_threshold=self.crop_nms_thresh
                )
                data.filter(keep)
        if "masks" not in data._stats or len(data["masks"]) == 0:
            return MaskSet.empty(*orig_size)
        masks = data["masks"].numpy()
        iou, stab = data["iou_preds"].float().numpy(), data["stability_score"].float().numpy()
        if self.min_mask_region_area > 0:
            masks, iou, stab = clean_small_regions(
                masks, iou, stab, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        return MaskSet.from_masks(masks, iou, stab).sort_canonical()

    def _process_crop(self, rgb, crop_box, layer_idx, orig_size):
        import time

        import torch
        from sam2.utils.amg import MaskData, uncrop_boxes_xyxy

        pred = self.predictor
        x0, y0, x1, y1 = crop_box
        crop = rgb[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        t0 = time.perf_counter()
        pred.set_image(crop)
        t1 = time.perf_counter()
        self.timings["encoder"] += t1 - t0
        points = self.point_grids[layer_idx] * np.array(crop_size)[None, ::-1]
        lows, ious = [], []
        grid = None
        if self.multimask_output:
            from segsearch.indexer.grid_decoder import GridDecoder

            feats = pred._features
            grid = GridDecoder(self.sam, feats["image_embed"][-1:], [f[-1:] for f in feats["high_res_feats"]])
        # the decoder batch is a speed knob only (see fast_amg._decode_batch); without the grid
        # decoder (single-mask output) the reference's points_per_batch
        batch = (
            _decode_batch(pred._features["image_embed"], grid.factored is not None)
            if grid is not None
            else self.points_per_batch
        )
        selector = self._selector(points, crop_size)

        def work(ids):  # (in a worker thread: inference mode is per thread)
            with torch.inference_mode():
                low, iou, prompt = self._decode(points[ids], crop_size, grid)
                keep = (
                    iou > self.pred_iou_thresh if self.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
                )
                return low[keep], iou[keep], torch.as_tensor(ids)[prompt[keep].cpu()]

        for idx in selector.levels():  # the whole grid, or coarse to fine (indexer/prompts.py)
            # batches side by side on a CPU, each single-threaded, as the SAM 1 engine decodes them
            chunks = [idx[i : i + batch] for i in range(0, len(idx), batch)]
            workers = _batch_workers(pred.device, len(chunks))
            level = _map_single_threaded(work, chunks, workers) if workers > 1 else [work(c) for c in chunks]
            for low, iou, prompt in level:
                lows.append(low)
                ious.append(iou)
                selector.observe(prompt, low)
        self.prompts_decoded += int(selector.decoded.sum())
        t2 = time.perf_counter()
        self.timings["decoder"] += t2 - t1
        data = self._full_resolution(torch.cat(lows), torch.cat(ious), crop_box, crop_size, orig_size)
        pred.reset_predictor()
        if len(data["masks"]):
            data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
            data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["masks"]))])
        self.timings["postprocess"] += time.perf_counter() - t2
        return data if len(data["masks"]) else MaskData()

    def _selector(self, points, crop_size):
        """The prompt selection for one crop's grid: SAM 2 resizes the crop to the square the
        embedding covers, so a point's place there is its share of each side."""
        from segsearch.indexer.prompts import selector_for

        feats = self.predictor._features["image_embed"][-1]
        mode = self.prompts if self.multimask_output else "grid"  # (single-mask output: the whole grid)
        share = points / np.array(crop_size[::-1], float)
        return selector_for(share, feats, mode, self.prompt_similarity, self.mask_threshold)

    def _decode(self, points, crop_size, grid=None):
        """Grid prompts -> (low-res logits K x h x w, predicted IoU K), K = prompts x outputs: the
        predictor's ``_predict`` without its upsampling of every mask. With ``grid`` (a
        :class:`~segsearch.indexer.grid_decoder.GridDecoder`, multimask) only prompts with an
        output above the IoU threshold come back, and per-image work is done once."""
        import torch

        pred, model = self.predictor, self.sam
        pts = torch.as_tensor(points, dtype=torch.float32, device=pred.device)
        coords = pred._transforms.transform_coords(pts, normalize=True, orig_hw=crop_size)
        labels = torch.ones(len(coords), 1, dtype=torch.int, device=coords.device)
        sparse, dense = model.sam_prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
        if grid is not None:
            low, iou, idx = grid(sparse, self.pred_iou_thresh)
            prompt = idx.repeat_interleave(low.shape[1])
            return low.flatten(0, 1).float(), iou.flatten(0, 1).float(), prompt
        feats = pred._features
        low, iou, _, _ = model.sam_mask_decoder(
            image_embeddings=feats["image_embed"][-1].unsqueeze(0),
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask_output,
            repeat_image=len(coords) > 1,
            high_res_features=[f[-1].unsqueeze(0) for f in feats["high_res_feats"]],
        )
        prompt = torch.arange(len(coords), device=low.device).repeat_interleave(low.shape[1])
        return low.flatten(0, 1).float(), iou.flatten(0, 1).float(), prompt

    def _full_resolution(self, low, iou, crop_box, crop_size, orig_size):
        """Stability filter, box NMS and masks for the IoU survivors of one crop, as the reference
        decides them, with full-resolution maps made only for the NMS survivors: the stability
        scores and boxes of ``upsample(low)`` are counted per low-resolution cell
        (``mask_bounds.bilinear_counts`` / ``bilinear_boxes``: work follows the masks' outlines, not
        the photo's pixels); scores within ``CLOSE`` of the threshold, where a per-cell count could
        differ from the kernel's by a pixel, are re-scored on the upsampled map itself."""
        import torch
        import torch.nn.functional as F
        from sam2.utils.amg import MaskData, calculate_stability_score, is_box_near_crop_edge, uncrop_masks

        from segsearch.indexer.mask_bounds import _stability, bilinear_boxes

        thr, off, t = self.mask_threshold, self.stability_score_offset, self.stability_score_thresh
        if t > 0 and len(low):
            maybe = calculate_stability_score(low, thr, off) >= t - self.LOW_RES_ERR
            low, iou = low[maybe], iou[maybe]
        orig_h, orig_w = orig_size
        empty = MaskData(masks=torch.zeros((0, orig_h, orig_w), dtype=torch.bool), boxes=torch.zeros((0, 4)))
        if len(low) == 0:
            return empty
        step = max(1, min(32, self.UPSAMPLE_BYTES // (4 * crop_size[0] * crop_size[1])))

        def upsample(rows):
            return F.interpolate(rows[:, None], crop_size, mode="bilinear", align_corners=False)[:, 0]

        def stability(at):  # per cell; scores within CLOSE of the threshold from the upsampled map
            s = _stability(low[at], tuple(crop_size), tuple(crop_size), thr, off)
            close = ((s - t).abs() < self.CLOSE).nonzero().flatten() if t > 0 else s[:0].long()
            for j in range(0, len(close), step):
                s[close[j : j + step]] = calculate_stability_score(upsample(low[at[close[j : j + step]]]), thr, off)
            return s

        boxes = bilinear_boxes(low, tuple(crop_size), thr)
        edge = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        low, iou, boxes = low[edge], iou[edge], boxes[edge]
        if len(low) == 0:
            return empty
        keep, stab = _lazy_nms(boxes, iou, self.box_nms_thresh, stability, t)
        low, iou, boxes = low[keep], iou[keep], boxes[keep]
        masks = torch.cat([upsample(low[j : j + step]) > thr for j in range(0, len(low), step)])
        return MaskData(
            masks=uncrop_masks(masks, crop_box, orig_h, orig_w).cpu(),
            boxes=boxes.cpu(),
            iou_preds=iou.cpu(),
            stability_score=stab.cpu(),
        )


# candidates whose stability is decided together when NMS reaches an undecided one: it and the next
# undecided ones NMS may reach (per-cell counting runs on batches, not one map at a time)
STABILITY_BATCH = 16


def _lazy_nms(boxes, scores, thr_iou: float, stability, thresh: float):
    """``batched_nms`` (one category) over the candidates that pass the stability filter, deciding
    stability only where NMS reaches: the reference filters first, but a candidate is kept only if it
    is stable and no *kept* box suppresses it, and an unstable one suppresses nothing, so one that
    a kept box suppresses never needs its score (most candidates repeat a kept mask).
    ``stability(idx)`` scores candidates; ``thresh`` <= 0 keeps all. Returns the kept indices in
    NMS order and their stability scores. IoUs in float32 with torchvision's formula, so ties and
    borderline overlaps go as the reference's."""
    import itertools

    import torch

    b = boxes.float().cpu().numpy()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    order = torch.argsort(scores.float().cpu(), descending=True, stable=True).numpy()
    score = np.full(len(b), np.nan, np.float32)
    decided = np.zeros(len(b), bool)
    alive = np.ones(len(b), bool)
    kept = []
    for k, i in enumerate(order):
        if not alive[i]:
            continue
        if not decided[i]:
            ahead = itertools.islice((j for j in order[k + 1 :] if alive[j] and not decided[j]), STABILITY_BATCH - 1)
            at = torch.as_tensor([i, *ahead], dtype=torch.long)
            score[at.numpy()] = stability(at).float().cpu().numpy()
            decided[at.numpy()] = True
        if thresh > 0 and not score[i] >= thresh:
            alive[i] = False
            continue
        kept.append(i)
        w = np.clip(np.minimum(b[i, 2], b[:, 2]) - np.maximum(b[i, 0], b[:, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], b[:, 3]) - np.maximum(b[i, 1], b[:, 1]), 0, None)
        inter = w * h
        alive &= ~(inter / (area[i] + area - inter) > np.float32(thr_iou))
    idx = torch.as_tensor(kept, dtype=torch.long)
    return idx, torch.as_tensor(score[kept] if kept else np.zeros(0, np.float32))
