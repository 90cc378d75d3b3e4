"""SAM 2.1 next to SAM 1: the registry, Meta's checkpoint format, both mask engines, iterative
prompting through /v1/segment, and a folder indexed and searched with the bundled sam2-shapes-tiny."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from conftest import png_bytes, write
from typer.testing import CliRunner

from segsearch.eval.shapes import HELDOUT_SEEDS, make_scene
from segsearch.models import get_sam_spec
from segsearch.models.known import SAM2_SHAPES_TINY_CONFIG
from segsearch.models.sam import load_sam

from segsearch.cli import app
from segsearch.indexer.amg import make_mask_generator

pytest.importorskip("sam2")
runner = CliRunner()
SAM2_OFFICIAL = ["sam2.1-hiera-tiny", "sam2.1-hiera-small", "sam2.1-hiera-base-plus", "sam2.1-hiera-large"]
# what the bundled model is run with in the shapes world (the SAM 1 model's SHAPES_AMG)
SHAPES2_AMG = {"points_per_side": 32, "stability_score_thresh": 0.6, "min_mask_region_area": 600}


@pytest.fixture(scope="module")
def sam2_tiny():
    return load_sam(get_sam_spec("sam2-shapes-tiny"), Path("unused"), offline=True)


def test_models_list_names_the_sam2_family_and_how_each_is_pinned():
    r = runner.invoke(app, ["models", "list", "--json"])
    assert r.exit_code == 0, r.output
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    for name in SAM2_OFFICIAL:
        m = rows[name]
        assert m["kind"] == "sam" and m["family"] == "sam2"
        assert m["hub_repo"] == f"facebook/{name}" and m["file"] == name.replace("-", "_") + ".pt"
        assert m["url"].startswith("https://dl.fbaipublicfiles.com/segment_anything_2/092824/")
        assert m["pin"].startswith("trust on first use") and m["sha256"] is None  # Meta publishes none
        assert "sam2" in m["needs"]
    bundled = rows["sam2-shapes-tiny"]
    assert bundled["bundled"] and bundled["family"] == "sam2" and len(bundled["sha256"]) == 64
    assert rows["sam-vit-b"]["family"] == "sam1"
    # the family is part of what a library records: a SAM 2 library's pipeline differs from SAM 1's
    assert get_sam_spec("sam2-shapes-tiny").fingerprint != get_sam_spec("sam-shapes-tiny").fingerprint


def test_a_checkpoint_in_metas_format_loads_by_path_and_gives_the_same_masks(tmp_path):
    from segsearch.models.sam2_build import build_sam2_model, config_from_state

    torch.manual_seed(3)
    model = build_sam2_model(SAM2_SHAPES_TINY_CONFIG)
    path = tmp_path / "my_sam2.pt"
    torch.save({"model": model.state_dict()}, path)  # as Meta stores sam2.1_hiera_*.pt
    spec = get_sam_spec(str(path))
    assert spec.family == "sam2" and spec.config["yaml"] == SAM2_SHAPES_TINY_CONFIG["yaml"]
    loaded = load_sam(spec, tmp_path)
    img = make_scene(HELDOUT_SEEDS[0]).image
    params = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    a = make_mask_generator("reference", model, **params).generate(img)
    b = make_mask_generator("reference", loaded, **params).generate(img)
    assert len(a.masks) > 0 and np.array_equal(a.masks, b.masks)
    # Meta's releases are recognised by their Hiera trunk (no file needed: the state's shapes)
    official = build_sam2_model({"family": "sam2", "yaml": "sam2:configs/sam2.1/sam2.1_hiera_t.yaml"})
    cfg = config_from_state(official.state_dict(), [])
    assert cfg["yaml"] == "sam2:configs/sam2.1/sam2.1_hiera_t.yaml" and cfg["image_size"] == 1024
    with pytest.raises(Exception, match="not a Segment Anything checkpoint|unknown SAM 2"):
        torch.save({"model": {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(7, 3, 7, 7)}}, path)
        get_sam_spec(str(path))


def _agree(ref, fast, scenes):
    for seed in scenes:
        img = make_scene(seed).image
        a, b = ref.generate(img), fast.generate(img)
        assert len(a.masks) == len(b.masks), seed
        for x, y in zip(a.masks, b.masks):
            assert (x & y).sum() / max((x | y).sum(), 1) >= 0.99
        assert np.allclose(a.predicted_iou, b.predicted_iou, atol=1e-4)
        assert np.allclose(a.stability_score, b.stability_score, atol=1e-3)
    return a


def test_fast_engine_gives_the_reference_masks_for_sam2(sam2_tiny):
    """The trained model at the shapes-world settings and at SAM 2's defaults (IoU 0.8, stability 0.95),
    plus a random-init model with no filters (every candidate upsampled) and a crop layer. (The fast
    engine counts stability scores and boxes per low-resolution cell and upsamples NMS survivors
    only: tests/test_amg.py checks the counting against every pixel at a 2048 px view.)"""
    for params in (SHAPES2_AMG, {"points_per_side": 16}):
        ref = make_mask_generator("reference", sam2_tiny, **params)
        fast = make_mask_generator("fast", sam2_tiny, **params)
        last = _agree(ref, fast, HELDOUT_SEEDS[:3])
    assert len(last.masks) > 0
    rnd = load_sam(tiny.TINY_SAM2, Path("unused"))
    params = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "crop_n_layers": 1}
    _agree(
        make_mask_generator("reference", rnd, **params), make_mask_generator("fast", rnd, **params), [HELDOUT_SEEDS[5]]
    )


def test_small_region_clean_up_means_the_same_for_both_families(sam2_tiny):
    """SAM 2's generator skips half of its clean-up without its CUDA extension; ours applies SAM 1's
    (holes and islands under the area, then NMS) on every device."""
    img = make_scene(HELDOUT_SEEDS[1]).image
    for engine in ("reference", "fast"):
        raw = make_mask_generator(engine, sam2_tiny, **{**SHAPES2_AMG, "min_mask_region_area": 0}).generate(img)
        clean = make_mask_generator(engine, sam2_tiny, **SHAPES2_AMG).generate(img)
        assert 0 < len(clean.masks) <= len(raw.masks)
        from segment_anything.utils.amg import remove_small_regions

        for m in clean.masks:  # nothing left for the clean-up to remove
            for mode in ("holes", "islands"):
                assert not remove_small_regions(m, SHAPES2_AMG["min_mask_region_area"], mode=mode)[1]


def test_segment_refines_with_the_returned_mask_token(tmp_path, sam2_tiny, tiny_embedder):
    import cv2
    from fastapi.testclient import TestClient

    from segsearch.settings import Settings

    from segsearch.api.app import create_app
    from segsearch.api.services import Services

    sc = make_scene(HELDOUT_SEEDS[3])
    data = png_bytes(sc.image)
    settings = Settings(data=tmp_path / "d", checkpoints=tmp_path / "c", sam="sam2-shapes-tiny", clip="clip-test-tiny")
    services = Services(settings, embedder=tiny_embedder, sam=sam2_tiny)
    j = int(np.argmax(sc.masks.reshape(len(sc.masks), -1).sum(1)))  # the largest shape, clicked deep inside
    depth = cv2.distanceTransform(sc.masks[j].astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    inside = [[int(x), int(y)]]
    with TestClient(base_url="http://127.0.0.1", app=create_app(settings, services=services)) as client:
        r1 = client.post(
            "/v1/segment", files={"file": ("s.png", data, "image/png")}, data={"points": json.dumps(inside)}
        )
        assert r1.status_code == 200, r1.text
        b1 = r1.json()
        assert len(b1["masks"]) == 3 and all(m["mask_token"] for m in b1["masks"])
        from segsearch.masks import decode_rle

        best = decode_rle(b1["masks"][0]["rle"]).astype(bool)
        gt = sc.masks[j]
        iou1 = (best & gt).sum() / (best | gt).sum()
        assert iou1 > 0.7  # the bundled model finds the shape under the click

        # the tutorial's next step: the best mask's logits back with one more (background) click
        outside = np.argwhere(~np.any(sc.masks, axis=0))[0]
        form = {
            "points": json.dumps([*inside, [int(outside[1]), int(outside[0])]]),
            "labels": "[1, 0]",
            "mask_input": b1["masks"][0]["mask_token"],
        }
        r2 = client.post("/v1/segment", files={"file": ("s.png", data, "image/png")}, data=form)
        assert r2.status_code == 200, r2.text
        b2 = r2.json()
        assert b2["cached_embedding"] is True and len(b2["masks"]) == 3
        # the prior reaches the model: the same clicks without it give other logits. (Whether the answer
        # improves is the model's business: the bundled one never saw mask prompts or negative clicks in
        # training, training/README.md; Meta's models were trained for exactly this.)
        plain = client.post(
            "/v1/segment",
            files={"file": ("s.png", data, "image/png")},
            data={k: v for k, v in form.items() if k != "mask_input"},
        ).json()
        assert [m["mask_token"] for m in plain["masks"]] != [m["mask_token"] for m in b2["masks"]]

        # a token is opaque and checked: garbage, another image's, or tampered ones are 422 problem+json
        other = png_bytes(make_scene(HELDOUT_SEEDS[4]).image)
        for files, token in [
            ({"file": ("s.png", data, "image/png")}, "not-a-token"),
            ({"file": ("o.png", other, "image/png")}, b1["masks"][0]["mask_token"]),
            ({"file": ("s.png", data, "image/png")}, b1["masks"][0]["mask_token"][:-40] + "A" * 40),
            ({"file": ("s.png", data, "image/png")}, "TTE" + "A" * 5000),
        ]:
            bad = client.post("/v1/segment", files=files, data={**form, "mask_input": token})
            assert bad.status_code == 422, bad.text
            assert bad.headers["content-type"].startswith("application/problem+json")
    services.close()


def test_index_a_folder_with_sam2_shapes_tiny_then_search_offline(tmp_path):
    """The issue's first-day story: `segsearch index PHOTOS --sam sam2-shapes-tiny --clip clip-shapes-tiny`,
    SAM 2's default generator settings (no flags), then `segsearch search` finds the right shape."""
    scenes = {seed: make_scene(seed) for seed in HELDOUT_SEEDS[:3]}
    for seed, sc in scenes.items():
        write(tmp_path / "photos" / f"{seed}.png", png_bytes(sc.image))
    env = {"SEGSEARCH_DATA": str(tmp_path / "data"), "SEGSEARCH_OFFLINE": "1"}
    args = ["index", str(tmp_path / "photos"), "--sam", "sam2-shapes-tiny", "--clip", "clip-shapes-tiny", "--json"]
    r = runner.invoke(app, args, env=env)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["indexed"] == 3 and summary["failed"] == 0 and summary["segments"] > 3

    info = runner.invoke(app, ["info", "--json"], env=env)
    assert "sam2-shapes-tiny" in info.stdout  # the library remembers its SAM 2 model
    label = next(sc.captions[0] for sc in scenes.values() if len(sc.labels))
    r = runner.invoke(app, ["search", label, "--kind", "object", "--top-k", "3", "--json"], env=env)  # no model flags
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert hits, r.stdout
    top = hits[0]
    seed = int(Path(top["image_path"]).stem)
    sc = scenes[seed]
    x, y, w, h = top["bbox"]
    box = np.zeros(sc.image.shape[:2], bool)
    box[y : y + h, x : x + w] = True
    overlaps = [(m & box).sum() / (m | box).sum() for m in sc.masks]
    assert sc.captions[int(np.argmax(overlaps))] == label and max(overlaps) > 0.3


def test_grid_decoder_gives_sam2s_own_decoder_logits(sam2_tiny):
    """The fast engine's decoder on SAM 2 (object-score token, sigmoid IoU head, high-resolution
    features added while upscaling) returns SAM2's MaskDecoder outputs for the prompts it keeps."""
    from segsearch.models.sam import image_predictor

    from segsearch.indexer.grid_decoder import GridDecoder

    img = make_scene(HELDOUT_SEEDS[4]).image
    pred = image_predictor(sam2_tiny)
    with torch.inference_mode():
        pred.set_image(img)
        pts = np.random.default_rng(1).random((48, 2)) * np.array(img.shape[:2])[::-1]
        coords = pred._transforms.transform_coords(torch.as_tensor(pts, dtype=torch.float32), True, img.shape[:2])
        pe = sam2_tiny.sam_prompt_encoder
        sparse, dense = pe(points=(coords[:, None, :], torch.ones(48, 1, dtype=torch.int)), boxes=None, masks=None)
        feats = pred._features
        low, iou, _, _ = sam2_tiny.sam_mask_decoder(
            image_embeddings=feats["image_embed"],
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=True,
            high_res_features=feats["high_res_feats"],
        )
        grid = GridDecoder(sam2_tiny, feats["image_embed"], feats["high_res_feats"])
        g_low, g_iou, idx = grid(sparse, 0.0)
        assert torch.allclose(g_iou, iou, atol=1e-5) and torch.allclose(g_low, low, atol=1e-3)
        thresh = float(iou.max(1).values.median())
        k_low, k_iou, k_idx = grid(sparse, thresh)
        assert 0 < len(k_idx) < 48 and torch.equal(k_idx, torch.nonzero(iou.max(1).values > thresh).flatten())
        assert torch.allclose(k_low, low[k_idx], atol=1e-3)


def test_a_sam2_1_model_comes_from_the_hub_on_first_use_and_indexes(tmp_path):
    """`segsearch index --sam sam2.1-hiera-tiny` on a fresh machine: the checkpoint is fetched from
    facebook/sam2.1-hiera-tiny (here a loopback fake hub serving a random-init file in Meta's format
    and the real tiny architecture), its hash recorded on first use, loaded, and a photo indexed."""
    import io

    from fake_hub import FakeHub, run_cli, running

    from segsearch.models.sam2_build import build_sam2_model

    torch.manual_seed(0)
    model = build_sam2_model(get_sam_spec("sam2.1-hiera-tiny").config)
    buf = io.BytesIO()
    torch.save({"model": {k: v.half() for k, v in model.state_dict().items()}}, buf)
    hub = FakeHub()
    hub.add("facebook/sam2.1-hiera-tiny", {"sam2.1_hiera_tiny.pt": buf.getvalue()}, commit="a" * 40)
    write(tmp_path / "lib" / "a.png", png_bytes(make_scene(HELDOUT_SEEDS[0]).image[:96, :128].copy()))
    with running(hub):
        args = ["index", str(tmp_path / "lib"), "--sam", "sam2.1-hiera-tiny", "--clip", "clip-test-tiny", "--json"]
        r = run_cli(hub, tmp_path, *args)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["indexed"] == 1
    pins = json.loads((tmp_path / "ckpt" / "hub-pins.json").read_text())
    assert pins["facebook/sam2.1-hiera-tiny/sam2.1_hiera_tiny.pt"]["revision"] == "a" * 40
