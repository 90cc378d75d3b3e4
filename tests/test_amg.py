"""The fast mask engine returns the reference engine's masks (same model, same settings): the
indexer's default may only change speed, never what gets indexed."""

import numpy as np
import pytest

import tiny
from segsearch.indexer.amg import ReferenceAMG, make_mask_generator
from segsearch.models.registry import get_sam_spec
from segsearch.models.sam import load_sam
from segsearch.quality import iou_matrix
from segsearch.settings import Settings
from segsearch.shapes import HELDOUT_SEEDS, SHAPES_AMG, make_scene


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


def test_unknown_engine_is_a_clear_error(shapes_sam):
    from segsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="fast, reference"):
        make_mask_generator("turbo", shapes_sam, **SHAPES_AMG)
