"""Adaptive prompt selection (indexer/prompts.py): fewer prompts decoded, the same segments, and
libraries indexed before it existed keep their fingerprints (nothing is re-indexed)."""

from pathlib import Path

import pytest

from segsearch.eval.quality import iou_matrix
from segsearch.eval.shapes import HELDOUT_SEEDS, make_scene, make_small_scene
from segsearch.models import amg_params
from segsearch.models.registry import get_sam_spec
from segsearch.models.sam import load_sam
from segsearch.settings import Settings

from segsearch.indexer.amg import make_mask_generator


@pytest.mark.parametrize("model", ["sam-shapes-tiny", "sam2-shapes-tiny"])
def test_adaptive_prompts_keep_the_full_grids_segments_with_fewer_prompts(model):
    """SAM's 32x32 grid on held-out scenes with nested and with small shapes (24-40 px beside large
    ones): every mask of the full grid that becomes a segment is found again (IoU >= 0.9), with
    far fewer prompts decoded."""
    sam = load_sam(get_sam_spec(model), Path("unused"), offline=True)
    params = {k: v for k, v in amg_params(Settings(sam=model, points_per_side=32)).items() if k != "prompts"}
    grid = make_mask_generator("fast", sam, **params, prompts="grid")
    adaptive = make_mask_generator("fast", sam, **params, prompts="adaptive")
    scenes = [make_scene(HELDOUT_SEEDS[7], nested=1.0), make_small_scene(HELDOUT_SEEDS[8], nested=1.0)]
    decoded = []
    for scene in scenes:
        full, sel = grid.generate(scene.image), adaptive.generate(scene.image)
        assert grid.prompts_decoded == 32 * 32
        decoded.append(adaptive.prompts_decoded)
        real = full.masks[full.areas >= Settings().min_segment_area]
        assert len(real) > 0
        assert (iou_matrix(real, sel.masks).max(axis=1) >= 0.9).all()
    assert max(decoded) < 0.6 * 32 * 32


def test_a_library_indexed_before_prompt_selection_keeps_its_fingerprint():
    """A record without the setting is recalled as the whole grid, and the whole grid's
    fingerprint is the one such a library was indexed under: its next run re-indexes nothing."""
    from segsearch.identity import pipeline_fingerprint
    from segsearch.record import Recorded, recalled

    old = {"points_per_side": 16, "pred_iou_thresh": 0.7, "stability_score_thresh": 0.6}
    rec = Recorded(sam={}, clip={}, amg=old, crop={}, clips=[])
    assert recalled(rec)["prompts"] == "grid"
    assert pipeline_fingerprint("s", "c", {**old, "prompts": "grid"}, {}) == pipeline_fingerprint("s", "c", old, {})
    assert pipeline_fingerprint("s", "c", {**old, "prompts": "adaptive"}, {}) != pipeline_fingerprint("s", "c", old, {})
    assert Settings().prompts == "adaptive"  # a new library gets the selection
