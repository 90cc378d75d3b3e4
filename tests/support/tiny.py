"""Tiny random-init models built with the real segment_anything / open_clip classes.

Registered under test names so they go through exactly the code paths real models use."""

from __future__ import annotations

from segsearch.models.registry import ClipSpec, SamSpec, register_clip, register_sam, sam_config

TINY_SAM = register_sam(
    SamSpec(
        "sam-test-tiny",
        sam_config(
            "vit_b",
            image_size=64,
            encoder_embed_dim=32,
            encoder_depth=1,
            encoder_num_heads=2,
            encoder_global_attn_indexes=[0],
            encoder_window_size=2,
            prompt_embed_dim=32,
            decoder_depth=1,
            decoder_mlp_dim=64,
            decoder_num_heads=2,
            iou_head_hidden_dim=32,
        ),
        None,
        "random-init tiny SAM for tests",
        seed=0,
    )
)

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_CLIP = register_clip(
    ClipSpec(
        "clip-test-tiny",
        "segsearch-test-tiny",
        None,
        model_cfg=TINY_CLIP_CFG,
        description="random-init tiny CLIP for tests",
        seed=0,
    )
)
# A second, different embedding model (for model-switch tests).
TINY_CLIP_B = register_clip(
    ClipSpec(
        "clip-test-tiny-b",
        "segsearch-test-tiny-b",
        None,
        model_cfg={**TINY_CLIP_CFG, "embed_dim": 24},
        description="another random-init tiny CLIP",
        seed=1,
    )
)

# AMG settings that let a random-init SAM produce masks at all, on a small prompt grid.
TINY_AMG = {
    "points_per_side": 4,
    "points_per_batch": 16,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 0.7,
    "min_segment_area": 16,
}

# CLIP models served by the loopback fake hub (tests/fake_hub.py): the bundled clip-shapes-tiny
# weights in a hub repo, pinned, unpinned (trust on first use), with a wrong pin, private, missing.
from segsearch.models.hub import HubWeights  # noqa: E402
from segsearch.models.known import CLIP_SHAPES_TINY_CFG  # noqa: E402
from segsearch.models.registry import get_clip_spec  # noqa: E402

HUB_REPO = "segsearch-test/clip-shapes-tiny"
HUB_FILE = "open_clip_pytorch_model.bin"
HUB_COMMIT = "5e65ea2c" * 5
HUB_SHA256 = get_clip_spec("clip-shapes-tiny").weights.sha256
# A file larger than huggingface_hub's 10 MB download chunk, so a cut download has something to resume.
HUB_BIG_FILE = "big.bin"


def hub_big_bytes() -> bytes:
    import numpy as np

    return np.random.RandomState(0).bytes(24 << 20)


HUB_BIG_SHA256 = __import__("hashlib").sha256(hub_big_bytes()).hexdigest()
for _name, _repo, _file, _rev, _sha in [
    ("clip-hub-test", HUB_REPO, HUB_FILE, HUB_COMMIT, HUB_SHA256),
    ("clip-hub-tofu", HUB_REPO, HUB_FILE, None, None),
    ("clip-hub-badsha", HUB_REPO, HUB_FILE, HUB_COMMIT, "0" * 64),
    ("clip-hub-private", "segsearch-test/private", HUB_FILE, None, None),
    ("clip-hub-nofile", HUB_REPO, "no_such_file.bin", HUB_COMMIT, HUB_SHA256),
    ("clip-hub-big", HUB_REPO, HUB_BIG_FILE, HUB_COMMIT, HUB_BIG_SHA256),
]:
    register_clip(
        ClipSpec(
            _name,
            "segsearch-shapes-tiny",
            HubWeights(_repo, _file, _rev, _sha),
            model_cfg=CLIP_SHAPES_TINY_CFG,
            description="shapes CLIP on the fake hub",
        )
    )

# A random-init SAM 2.1 (the sam2 package's classes at sam2-shapes-tiny's small config).
from segsearch.models.known import SAM2_SHAPES_TINY_CONFIG  # noqa: E402

TINY_SAM2 = register_sam(
    SamSpec(
        "sam2-test-tiny", SAM2_SHAPES_TINY_CONFIG, None, "random-init tiny SAM 2.1 for tests", seed=0, family="sam2"
    )
)
