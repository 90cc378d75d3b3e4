"""EfficientViT-SAM, the CPU-class SAM in the registry: the lab's checkpoint format loads into SAM 1's
model key for key and computes what the lab's own model computes; fetched from the lab's Hub repo
(a loopback fake hub here) on first use, it indexes a photo."""

import io
import json

import pytest
import torch
from conftest import png_bytes, scene, write

from segsearch.models import get_sam_spec

pytest.importorskip("efficientsam")


@pytest.fixture(scope="module")
def lab_model():
    from efficientsam.sam_model_zoo import create_efficientvit_sam_model

    torch.manual_seed(0)
    return create_efficientvit_sam_model("efficientvit-sam-l0", pretrained=False).eval()


def test_the_labs_checkpoint_loads_key_for_key_and_computes_the_same(lab_model):
    from segsearch.models.sam import build_sam_model

    ours = build_sam_model(get_sam_spec("efficientvit-sam-l0").config)
    loaded = ours.load_state_dict(lab_model.state_dict(), strict=True)
    assert not loaded.missing_keys and not loaded.unexpected_keys
    x = torch.randn(1, 3, 512, 512)
    with torch.inference_mode():
        want = lab_model.image_encoder(x)
        got = ours.image_encoder(x)
        # SAM's 1024 px frame: each 2 x 2 block averaged down to the encoder's 512 px
        framed = ours.image_encoder(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    assert got.shape == (1, 256, 64, 64) and torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(framed, want, atol=1e-5)
    points = (torch.tensor([[[300.0, 400.0]]]), torch.tensor([[1]]))
    with torch.inference_mode():
        sparse, dense = ours.prompt_encoder(points=points, boxes=None, masks=None)
        lab_sparse, lab_dense = lab_model.prompt_encoder(points=points, boxes=None, masks=None)
        pe = ours.prompt_encoder.get_dense_pe()
        m1, s1 = ours.mask_decoder(want, pe, sparse, dense, multimask_output=True)
        m2, s2 = lab_model.mask_decoder(want, lab_model.prompt_encoder.get_dense_pe(), lab_sparse, lab_dense, True)
    assert torch.allclose(m1, m2, atol=1e-4) and torch.allclose(s1, s2, atol=1e-5)


def test_efficientvit_sam_comes_from_the_labs_hub_repo_on_first_use_and_indexes(tmp_path, lab_model):
    """`segsearch index --sam efficientvit-sam-l0` on a fresh machine: the checkpoint is fetched from
    mit-han-lab/efficientvit-sam (here a loopback fake hub serving the lab's format), its hash recorded
    on first use, and a photo indexed; `models list` shows the model, its licence and its cost."""
    from fake_hub import FakeHub, run_cli, running

    buf = io.BytesIO()
    torch.save({"state_dict": lab_model.state_dict()}, buf)
    hub = FakeHub()
    hub.add("mit-han-lab/efficientvit-sam", {"efficientvit_sam_l0.pt": buf.getvalue()}, commit="e" * 40)
    write(tmp_path / "lib" / "a.png", png_bytes(scene()))
    with running(hub):
        args = ["index", str(tmp_path / "lib"), "--sam", "efficientvit-sam-l0", "--clip", "clip-test-tiny", "--json"]
        r = run_cli(hub, tmp_path, *args)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1])["indexed"] == 1
        listing = run_cli(hub, tmp_path, "models", "list", "--json")
    pins = json.loads((tmp_path / "ckpt" / "hub-pins.json").read_text())
    assert pins["mit-han-lab/efficientvit-sam/efficientvit_sam_l0.pt"]["revision"] == "e" * 40
    row = next(m for m in json.loads(listing.stdout) if m["name"] == "efficientvit-sam-l0")
    assert row["licence"] == "Apache-2.0" and row["cost"].endswith("x") and row["present"]
