"""The fast mask engine returns the reference engine's masks (same model, same settings): the
indexer's default may only change speed, never what gets indexed."""

import numpy as np
import pytest
import tiny

from segsearch.eval.quality import iou_matrix
from segsearch.eval.shapes import HELDOUT_SEEDS, SHAPES_AMG, make_scene
from segsearch.models import amg_params
from segsearch.models.registry import get_sam_spec
from segsearch.models.sam import load_sam
from segsearch.settings import Settings

from segsearch.indexer.amg import ReferenceAMG, make_mask_generator


def agreement(ref, fast):
    """Mean best IoU of each reference mask among the fast masks, and the count ratio."""
    if len(ref) == 0:
        return (1.0 if len(fast) == 0 else 0.0), (1.0 if len(fast) == 0 else float("inf"))
    ious = iou_matrix(ref.masks, fast.masks).max(1) if len(fast) else np.zeros(len(ref))
    return float(ious.mean()), len(fast) / len(ref)


@pytest.fixture(scope="module")
def shapes_sam(tmp_path_factory):
    return load_sam(get_sam_spec("sam-shapes-tiny"), Settings(data=tmp_path_factory.mktemp("d")).checkpoints)


def test_fast_matches_reference_on_shapes_scenes(shapes_sam):
    ref = make_mask_generator("reference", shapes_sam, **SHAPES_AMG)
    fast = make_mask_generator("fast", shapes_sam, **SHAPES_AMG)
    n_ref = n_fast = 0
    for seed in HELDOUT_SEEDS[:4]:
        img = make_scene(seed).image
        a, b = ref.generate(img), fast.generate(img)
        miou, _ = agreement(a, b)
        assert miou >= 0.97, (seed, miou)
        n_ref, n_fast = n_ref + len(a), n_fast + len(b)
        # canonical order, boxes and areas agree too, so segment ids would be the same
        if len(a) == len(b):
            np.testing.assert_array_equal(a.boxes, b.boxes)
    assert n_ref > 10
    assert 0.95 <= n_fast / n_ref <= 1.05, (n_ref, n_fast)


def test_fast_matches_reference_with_crop_layers(shapes_sam):
    params = {**SHAPES_AMG, "points_per_side": 8, "crop_n_layers": 1}
    img = make_scene(HELDOUT_SEEDS[5]).image
    a = ReferenceAMG(shapes_sam, **params).generate(img)
    b = make_mask_generator("fast", shapes_sam, **params).generate(img)
    miou, ratio = agreement(a, b)
    assert len(a) > 0 and miou >= 0.97 and 0.95 <= ratio <= 1.05, (len(a), len(b), miou)


def test_fast_matches_reference_on_random_model():
    """A random-init SAM with no filters: hundreds of odd, overlapping masks stress NMS and boxes."""
    sam = load_sam(tiny.TINY_SAM, Settings().checkpoints)
    params = {k: v for k, v in tiny.TINY_AMG.items() if k != "min_segment_area"}
    params["points_per_side"] = 8
    rng = np.random.default_rng(0)
    for shape in [(96, 128), (64, 64), (150, 70)]:
        img = rng.integers(0, 255, size=(*shape, 3), dtype=np.uint8)
        a = ReferenceAMG(sam, **params).generate(img)
        b = make_mask_generator("fast", sam, **params).generate(img)
        miou, ratio = agreement(a, b)
        assert miou >= 0.97 and 0.95 <= ratio <= 1.05, (shape, len(a), len(b), miou)


def _small_islands(masks, area):
    """How many masks have a connected piece smaller than ``area`` besides their largest piece."""
    import cv2

    n = 0
    for m in masks:
        _, _, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
        sizes = sorted(stats[1:, cv2.CC_STAT_AREA])
        n += any(a < area for a in sizes[:-1])
    return n


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_small_region_cleanup_removes_stray_islands(engine, shapes_sam):
    """min_mask_region_area (SAM's clean-up): a few stray pixels on a neighbouring shape no longer
    ride along with a mask, so its box (and the crop CLIP sees) is the object's. Held-out scene 28
    has such masks without the clean-up."""
    img = make_scene(HELDOUT_SEEDS[28]).image
    area = SHAPES_AMG["min_mask_region_area"]
    raw = make_mask_generator(engine, shapes_sam, **{**SHAPES_AMG, "min_mask_region_area": 0}).generate(img)
    clean = make_mask_generator(engine, shapes_sam, **SHAPES_AMG).generate(img)
    assert _small_islands(raw.masks, area) > 0
    assert _small_islands(clean.masks, area) == 0 and len(clean) > 0


def test_unknown_engine_is_a_clear_error(shapes_sam):
    from segsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="fast, reference"):
        make_mask_generator("turbo", shapes_sam, **SHAPES_AMG)


def _decode_both(sam, img, n_points, iou_thresh):
    import torch
    from segment_anything import SamPredictor

    from segsearch.indexer.grid_decoder import GridDecoder

    pred = SamPredictor(sam)
    with torch.inference_mode():
        pred.set_image(img)
        pts = np.random.default_rng(1).random((n_points, 2)) * np.array(img.shape[:2])[::-1]
        coords = torch.as_tensor(pred.transform.apply_coords(pts, img.shape[:2]), dtype=torch.float)
        sparse, dense = sam.prompt_encoder(
            points=(coords[:, None, :], torch.ones(n_points, 1, dtype=torch.int)), boxes=None, masks=None
        )
        low, iou = sam.mask_decoder(
            image_embeddings=pred.features,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        return (low, iou), GridDecoder(sam, pred.features)(sparse, iou_thresh)


@pytest.mark.parametrize("model", ["shapes", "narrow-random"])
def test_grid_decoder_gives_the_official_decoders_masks(model, shapes_sam):
    """The fast engine's decoder (per-image work cached, fused/reassociated attention, upscaling
    only for prompts with a candidate above the IoU threshold) returns MaskDecoder's logits: on the
    bundled SAM (reassociated attention, as ViT-B/L/H) and on a decoder whose attention is too
    narrow for that (the plain path)."""
    import torch

    from segsearch.models.registry import sam_config
    from segsearch.models.sam import build_sam_model

    from segsearch.indexer import grid_decoder

    if model == "shapes":
        sam, thresh = shapes_sam, SHAPES_AMG["pred_iou_thresh"]
    else:
        torch.manual_seed(0)
        sam = build_sam_model(
            sam_config(
                "vit_b",
                image_size=64,
                encoder_embed_dim=32,
                encoder_depth=1,
                encoder_num_heads=2,
                encoder_global_attn_indexes=[0],
                encoder_window_size=2,
                prompt_embed_dim=32,
                decoder_depth=2,
                decoder_mlp_dim=64,
                decoder_num_heads=8,
                iou_head_hidden_dim=32,
            )
        ).eval()
        thresh = 0.0
    wide = model == "shapes"
    assert grid_decoder._low_rank(sam.mask_decoder.transformer.final_attn_token_to_image, 7) == wide
    img = make_scene(HELDOUT_SEEDS[0]).image
    (low, iou), (low2, iou2, idx) = _decode_both(sam, img, 48, thresh)
    expected = np.flatnonzero(iou.max(1).values.numpy() > thresh) if thresh > 0 else np.arange(48)
    assert len(expected) > 0 and np.array_equal(idx.numpy(), expected)
    if thresh > 0:
        assert len(expected) < 48  # some prompts were skipped, so the gate was exercised
    np.testing.assert_allclose(iou2.numpy(), iou[idx].numpy(), atol=1e-5)
    np.testing.assert_allclose(low2.numpy(), low[idx].numpy(), atol=2e-4 * float(low.abs().max()))


def test_grid_decoder_candidates_skip_the_padding_and_keep_the_rest(shapes_sam):
    """Per-mask candidates (as the fast engine asks for them) are the official decoder's masks above
    the predicted-IoU threshold, in the same order; for a landscape photo the rows over SAM's
    square padding, which nothing reads, are not computed."""
    import torch
    from segment_anything import SamPredictor

    from segsearch.indexer.fast_amg import FastAMG
    from segsearch.indexer.grid_decoder import GridDecoder, Upscaler

    img = make_scene(HELDOUT_SEEDS[0], width=640, height=400).image
    thresh = SHAPES_AMG["pred_iou_thresh"]
    (low, iou), _ = _decode_both(shapes_sam, img, 48, thresh)
    gen = FastAMG(shapes_sam)
    pred = SamPredictor(shapes_sam)
    with torch.inference_mode():
        pred.set_image(img)
        gen.predictor = pred
        rows, cols = gen._needed_low_res(pred.features)
        assert cols == 128 and rows < 100  # 400 / 640 of 128 rows, plus the two the bounds read
        pts = np.random.default_rng(1).random((48, 2)) * np.array(img.shape[:2])[::-1]
        coords = torch.as_tensor(pred.transform.apply_coords(pts, img.shape[:2]), dtype=torch.float)
        sparse, _ = shapes_sam.prompt_encoder(
            points=(coords[:, None, :], torch.ones(48, 1, dtype=torch.int)), boxes=None, masks=None
        )
        masks, ious = GridDecoder(shapes_sam, pred.features, needed=(rows, cols)).candidates(sparse, thresh)
    keep = iou > thresh
    want = low[keep]
    assert 0 < len(masks) == int(keep.sum()) < 3 * 48
    np.testing.assert_allclose(ious.numpy(), iou[keep].numpy(), atol=1e-5)
    tol = 2e-4 * float(want.abs().max())
    np.testing.assert_allclose(masks[:, :rows].numpy(), want[:, :rows].numpy(), atol=tol)
    # whole 4-row blocks are computed, so the rows up to the next multiple of 4 are real too
    assert (masks[:, -(-rows // 4) * 4 :] == Upscaler.FILL).all()


@pytest.mark.parametrize("model", ["bundled", "random-rel-pos"])
def test_fused_attention_encoder_gives_the_official_embedding(model, shapes_sam):
    """The fast engine's encoder (fused attention, relative positions as a mask built per slab
    of rows) returns ImageEncoderViT.forward's embedding: on the bundled SAM (windowed blocks
    with padding, global blocks) and on an encoder whose relative-position tables are random and
    large, split into several slabs."""
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    from segsearch.models.known import SAM_SHAPES_TINY_CONFIG
    from segsearch.models.sam import build_sam_model

    from segsearch.indexer import fast_encoder

    if model == "bundled":
        sam = shapes_sam
    else:
        torch.manual_seed(0)
        sam = build_sam_model(SAM_SHAPES_TINY_CONFIG).eval()
        with torch.no_grad():
            for name, p in sam.image_encoder.named_parameters():
                if ".rel_pos_" in name:
                    p.normal_(0, 1.0)
    img = make_scene(HELDOUT_SEEDS[3]).image
    resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(img)
    x = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].contiguous())
    # random tables: 64 query rows a slab, 7 slabs per global block
    budget = fast_encoder._MASK_BUDGET if model == "bundled" else 3 * 400 * 64
    with torch.inference_mode():
        want = sam.image_encoder(x)
        got = fast_encoder.encode(sam.image_encoder, x, budget)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_memory_bounded_upsampling_gives_identical_masks(shapes_sam, monkeypatch):
    """A 48 MP photo upsamples one candidate at a time (a batch of 32 was 6 GB of logits); small
    images still batch. Both give the same masks, boxes and scores, bit for bit."""
    from segsearch.indexer.fast_amg import FastAMG

    params = {**SHAPES_AMG, "stability_score_thresh": 0.95}  # SAM's default: many full-resolution re-scores
    img = make_scene(HELDOUT_SEEDS[5]).image
    batched = make_mask_generator("fast", shapes_sam, **params).generate(img)
    assert FastAMG(shapes_sam)._upsample_step(img.shape[:2]) == 32
    monkeypatch.setattr(FastAMG, "UPSAMPLE_BYTES", 1)  # one candidate per step
    assert FastAMG(shapes_sam)._upsample_step((6000, 8000)) == 1
    single = make_mask_generator("fast", shapes_sam, **params).generate(img)
    assert len(batched) > 0 and len(single) == len(batched)
    assert (single.masks == batched.masks).all() and (single.boxes == batched.boxes).all()
    assert (single.stability_score == batched.stability_score).all()


def test_at_sams_default_parameters_the_masks_are_the_reference_masks(shapes_sam):
    """What `segsearch index` runs with no flags (32x32 prompts, predicted IoU 0.88, stability 0.95,
    where many candidates' scores sit near the threshold): the same masks, pixel for pixel, the
    same boxes and the same count as the official generator."""
    params = {k: Settings.model_fields[k].default for k in amg_params(Settings())}
    params["prompts"] = (
        "grid"  # every grid prompt, as the official generator decodes them (tests/test_prompts.py: adaptive)
    )
    img = make_scene(HELDOUT_SEEDS[1], width=384, height=288).image
    a = ReferenceAMG(shapes_sam, **params).generate(img)
    b = make_mask_generator("fast", shapes_sam, **params).generate(img)
    assert len(a) > 0 and len(a) == len(b)
    assert (a.masks == b.masks).all() and (a.boxes == b.boxes).all()
    np.testing.assert_allclose(a.predicted_iou, b.predicted_iou, atol=1e-5)


def test_stability_counted_per_cell_equals_counting_every_pixel(shapes_sam):
    """The stability scores the fast engine counts per cell (input frame, and full resolution of a
    large photo) equal the scores of the upsampled maps, pixel by pixel (crops of several shapes,
    logits with sharp and flat edges, values on both sides of both thresholds)."""
    import torch
    import torch.nn.functional as F
    from segment_anything.utils.amg import calculate_stability_score

    from segsearch.indexer.fast_encoder import set_image

    gen = make_mask_generator("fast", shapes_sam)
    g = torch.Generator().manual_seed(0)
    for w, h in [(640, 480), (333, 517), (512, 512), (90, 700)]:
        set_image(gen.predictor, make_scene(HELDOUT_SEEDS[0], width=w, height=h).image)
        low = torch.randn(24, 128, 128, generator=g) * 3 + torch.linspace(-6, 6, 128)[None, :, None]
        low[:4] = low[:4].round()  # plateaus exactly at the thresholds
        got = gen._input_frame_stability(low, torch.arange(24), 0.0, 1.0)
        in_h, in_w = gen.predictor.input_size
        up = F.interpolate(low[:, None], (512, 512), mode="bilinear", align_corners=False)[:, 0, :in_h, :in_w]
        torch.testing.assert_close(got, calculate_stability_score(up, 0.0, 1.0), atol=1e-4, rtol=0)
    # and at full resolution of a photo many times the input frame (the second step counted per cell)
    h, w = 1732, 2309
    gen.predictor.original_size = (h, w)
    gen.predictor.input_size = tuple(gen.predictor.transform.get_preprocess_shape(h, w, 512))
    got = gen._full_stability(low, torch.arange(24), (h, w), 0.0, 1.0)
    want = calculate_stability_score(gen._upsample(low, (h, w)), 0.0, 1.0)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_one_step_boxes_and_stability_counted_per_cell_equal_every_pixels():
    """SAM 2's one bilinear step from its logits to the photo (or its 2048 px working view): the
    boxes the fast engine finds per low-resolution cell are exactly those of the upsampled masks,
    and the stability scores agree, at every size and aspect (empty maps, plateaus at the
    thresholds, a mask in one corner)."""
    import torch
    import torch.nn.functional as F
    from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

    from segsearch.indexer.mask_bounds import _stability, bilinear_boxes

    g = torch.Generator().manual_seed(0)
    for h, w in [(1536, 2048), (480, 640), (517, 333), (700, 90), (256, 256), (100, 120)]:
        low = torch.randn(24, 64, 64, generator=g) * 3 + torch.linspace(-6, 6, 64)[None, :, None]
        low[:4] = low[:4].round()
        low[4] = -5
        low[5] = -4
        low[5, :10, :10] = 3
        up = F.interpolate(low[:, None], (h, w), mode="bilinear", align_corners=False)[:, 0]
        assert torch.equal(bilinear_boxes(low, (h, w), 0.0), batched_mask_to_box(up > 0)), (h, w)
        got, want = _stability(low, (h, w), (h, w), 0.0, 1.0), calculate_stability_score(up, 0.0, 1.0)
        torch.testing.assert_close(got[4:], want[4:], atol=1e-5, rtol=0, equal_nan=True)
        # exact plateaus at the +-1 thresholds: the kernel's rounding tips a few pixels of a million
        # (a decision that close to the threshold is re-scored on the map itself)
        torch.testing.assert_close(got[:4], want[:4], atol=1e-3, rtol=0)


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_real_width_decoders_keep_the_official_masks(family):
    """ViT-B/L/H's and SAM 2.1's mask decoder (256 channels, 8 heads) run factored in the fast
    engine: no per-prompt image tensor, the image side kept as shared + low rank (indexer/factored.py).
    Random weights (timing-size models need no checkpoint): the masks above the IoU threshold, for
    the rows a 4:3 photo reads, and the predicted IoUs are the official decoder's."""
    import dataclasses
    from pathlib import Path

    import torch

    from segsearch.models.registry import get_sam_spec, sam_config
    from segsearch.models.sam import build_sam_model, load_sam

    from segsearch.indexer.grid_decoder import GridDecoder

    torch.manual_seed(0)
    if family == "sam":  # SAM's own decoder and prompt encoder on a small image encoder
        cfg = dict(image_size=256, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2)
        cfg.update(encoder_global_attn_indexes=[0], encoder_window_size=4)
        sam = build_sam_model(sam_config("vit_b", **cfg)).eval()
        md, pe, high_res = sam.mask_decoder, sam.prompt_encoder, None
    else:
        spec = get_sam_spec("sam2.1-hiera-tiny")
        sam = load_sam(dataclasses.replace(spec, weights=None), Path("unused")).eval()
        md, pe = sam.sam_mask_decoder, sam.sam_prompt_encoder
    h, w = pe.image_embedding_size
    size = pe.input_image_size[0]
    feats = torch.randn(1, md.transformer.embedding_dim, h, w)
    if family == "sam2":
        high_res = [torch.randn(1, 32, 4 * h, 4 * w), torch.randn(1, 64, 2 * h, 2 * w)]
    n = 24
    pts = torch.as_tensor(np.random.default_rng(2).random((n, 1, 2)) * [size, size * 3 / 4], dtype=torch.float)
    with torch.inference_mode():
        sparse, dense = pe(points=(pts, torch.ones(n, 1, dtype=torch.int)), boxes=None, masks=None)
        kw = dict(repeat_image=True, high_res_features=high_res) if family == "sam2" else {}
        low, iou = md(feats, pe.get_dense_pe(), sparse, dense, multimask_output=True, **kw)[:2]
        rows = h * 3 // 4
        grid = GridDecoder(sam, feats, high_res, needed=(4 * rows, 4 * w))  # low-res mask pixels
        assert grid.factored is not None  # the path under test
        mid = iou.flatten().sort().values[len(iou.flatten()) // 2 - 1 :][:2]
        thresh = float(mid.mean())  # halfway between two predictions: no rounding decides a mask
        masks, ious = grid.candidates(sparse, thresh)
    keep = iou > thresh
    assert 0 < len(masks) == int(keep.sum()) < 3 * n
    torch.testing.assert_close(ious, iou[keep], atol=1e-5, rtol=0)
    want = low[keep][:, : 4 * rows]
    torch.testing.assert_close(masks[:, : 4 * rows], want, atol=2e-4 * float(want.abs().max()), rtol=0)
