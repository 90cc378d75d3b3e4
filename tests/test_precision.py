"""Reduced precision (issue 31 item 7), opt-in: CLIP's image tower in int8 or bf16, SAM's image
encoder in bf16. A library indexed with it remembers it, finds what fp32 finds, and switching needs
--reindex like any model setting."""

import json

import pytest
from typer.testing import CliRunner

from segsearch.eval.shapes import DEMO_SEEDS, make_scene

from segsearch.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "flags",
    [
        {"--clip-precision": "int8"},
        {"--clip-precision": "bf16", "--sam-precision": "bf16"},
    ],
    ids=["int8-clip", "bf16-sam-and-clip"],
)
def test_a_reduced_precision_library_remembers_it_and_finds_what_fp32_finds(tmp_path, flags):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in DEMO_SEEDS[:4]:
        Image.fromarray(make_scene(seed).image).save(photos / f"{seed}.png")
    models = ["--sam", "sam-shapes-tiny", "--clip", "clip-shapes-tiny"]

    def cli(data, *args):
        r = runner.invoke(app, [*args, "--data", str(tmp_path / data)])
        assert r.exit_code == 0, r.output
        return r

    def top(data, query):
        hits = json.loads(cli(data, "search", query, "--json", "--top-k", "5").stdout)
        return [(h["image_path"], tuple(h["bbox"]), round(h["score"], 2)) for h in hits]

    cli("fp32", "index", str(photos), *models, "--json")
    given = [x for kv in flags.items() for x in kv]
    cli("int8", "index", str(photos), *models, *given, "--json")
    info = json.loads(cli("int8", "info", "--json").stdout)
    assert info["library"]["crop"]["precision"] == flags["--clip-precision"]
    assert info["library"]["amg"]["sam_precision"] == flags.get("--sam-precision", "fp32")
    plain = json.loads(cli("fp32", "info", "--json").stdout)["library"]
    assert "precision" not in plain["crop"] and plain["amg"]["sam_precision"] == "fp32"  # fp32: as before
    again = json.loads(cli("int8", "index", str(photos), "--json").stdout)  # no flag: remembered, nothing to redo
    assert again["indexed"] == 0 and again["skipped"] == 4

    def same(a, b):  # the same segment: same photo, boxes of IoU >= 0.9 (bf16 masks move by a pixel)
        (pa, (ax, ay, aw, ah)), (pb, (bx, by, bw, bh)) = a[:2], b[:2]
        iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
        ih = max(0, min(ay + ah, by + bh) - max(ay, by))
        return pa == pb and iw * ih >= 0.9 * (aw * ah + bw * bh - iw * ih)

    for query in ("red circle", "blue square", "yellow star"):
        want, got = top("fp32", query), top("int8", query)
        assert same(got[0], want[0]), (query, want, got)  # the same best segment
        # a hit that beats fp32's 5th by more than the score drift allowed below stays in the top 5
        # (near ties, often filler hits that match nothing, may swap)
        clear = [w for w in want if w[2] > want[-1][2] + 0.04]
        assert all(any(same(g, w) for g in got) for w in clear), (query, want, got)
        # the same segments score the same (bf16 may find a segment fp32 did not, or lose one)
        assert all(abs(g[2] - w[2]) <= 0.02 for g in got for w in want if same(g, w)), (want, got)
    for flag in flags:
        r = runner.invoke(app, ["index", str(photos), flag, "fp32", "--data", str(tmp_path / "int8")])
        assert r.exit_code == 2 and "--reindex" in r.output, (flag, r.output)


def test_libraries_indexed_before_sam_precision_keep_their_fingerprints():
    """A record without ``sam_precision`` means fp32, and fp32 leaves the fingerprint as it was:
    upgrading re-indexes nothing."""
    from segsearch.identity import pipeline_fingerprint
    from segsearch.record import Recorded, recalled

    old = {"points_per_side": 16, "prompts": "adaptive", "mask_side": 2048}
    assert recalled(Recorded(sam={}, clip={}, amg=old, crop={}, clips=[]))["sam_precision"] == "fp32"
    fp = pipeline_fingerprint("s", "c", old, {})
    assert pipeline_fingerprint("s", "c", {**old, "sam_precision": "fp32"}, {}) == fp
    assert pipeline_fingerprint("s", "c", {**old, "sam_precision": "bf16"}, {}) != fp


def test_bf16_reaches_the_encoder_and_the_mask_head_and_masks_stay_close(tmp_path):
    """``sam_precision bf16`` runs the image encoder and the mask head's last product in bfloat16,
    and the masks stay those of fp32: every fp32 segment found again (IoU >= 0.9) on a scene."""
    import torch

    from segsearch.eval.quality import iou_matrix
    from segsearch.eval.shapes import HELDOUT_SEEDS
    from segsearch.models import amg_params
    from segsearch.models.sam import precision_of
    from segsearch.runtime import load_sam
    from segsearch.settings import Settings

    from segsearch.indexer.amg import make_mask_generator
    from segsearch.indexer.grid_decoder import GridDecoder

    scene = make_scene(HELDOUT_SEEDS[3], nested=1.0)
    masks = {}
    for prec in ("fp32", "bf16"):
        s = Settings(sam="sam-shapes-tiny", offline=True, sam_precision=prec, data=tmp_path)
        sam = load_sam(s)
        assert precision_of(sam) == prec
        assert next(sam.image_encoder.parameters()).dtype == (torch.bfloat16 if prec == "bf16" else torch.float32)
        assert next(sam.mask_decoder.parameters()).dtype == torch.float32  # the decoder stays fp32
        gen = make_mask_generator("fast", sam, **amg_params(s))
        feats = torch.zeros(1, 64, 32, 32)
        assert GridDecoder(sam, feats).upscaler.w2.dtype == (torch.bfloat16 if prec == "bf16" else torch.float32)
        m = gen.generate(scene.image).masks
        masks[prec] = m[m.reshape(len(m), -1).sum(1) >= s.min_segment_area]
    assert len(masks["fp32"]) >= 3
    best = iou_matrix(masks["fp32"], masks["bf16"]).max(axis=1)
    assert (best >= 0.9).all() and best.mean() >= 0.98, best


def test_a_new_default_library_on_a_cpu_names_the_faster_choices(tmp_path):
    """Without --sam, a new library on a CPU says which SAM it got and what is faster here: the
    CPU-class SAM, and bf16 where the CPU multiplies it in hardware. Nothing when models were picked."""
    import numpy as np
    from PIL import Image

    from segsearch.models.sam import native_bf16

    (tmp_path / "p").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "p" / "a.png")
    env = {"SEGSEARCH_OFFLINE": "1", "SEGSEARCH_DEVICE": "cpu"}
    r = runner.invoke(app, ["index", str(tmp_path / "p"), "--data", str(tmp_path / "d")], env=env)
    assert "A new library: SAM sam-vit-b (the default)" in r.output and "efficientvit-sam-l0" in r.output
    assert ("--sam-precision bf16 --clip-precision bf16" in r.output) == native_bf16(), r.output
    r = runner.invoke(
        app, ["index", str(tmp_path / "p"), "--data", str(tmp_path / "e"), "--sam", "sam-shapes-tiny"], env=env
    )
    assert "A new library" not in r.output and "bfloat16" not in r.output, r.output
