"""Build a ``segment_anything.modeling.Sam`` from a spec config (any size) and load weights.

Mirrors ``segment_anything.build_sam._build_sam`` but with every dimension taken from the
config, so the official ViT-B/L/H and our small models share one builder and one loader.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from segsearch.models.registry import SAM_ARCHS, SAM_DEFAULTS, SamSpec


def build_sam_model(config: dict):
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    c = {**SAM_DEFAULTS, **config}
    prompt_dim = c["prompt_embed_dim"]
    image_size = c["image_size"]
    emb_size = image_size // c["vit_patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=c["encoder_depth"],
            embed_dim=c["encoder_embed_dim"],
            img_size=image_size,
            mlp_ratio=c["encoder_mlp_ratio"],
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=c["encoder_num_heads"],
            patch_size=c["vit_patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(c["encoder_global_attn_indexes"]),
            window_size=c["encoder_window_size"],
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(emb_size, emb_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=c["decoder_depth"],
                embedding_dim=prompt_dim,
                mlp_dim=c["decoder_mlp_dim"],
                num_heads=c["decoder_num_heads"],
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=c["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_state_dict(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def infer_sam_config(path: Path) -> dict:
    """Architecture of a SAM checkpoint file from its tensor shapes (official ViT-B/L/H)."""
    state = load_state_dict(path)
    try:
        dim = state["image_encoder.patch_embed.proj.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(f"{path} is not a Segment Anything checkpoint") from exc
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for arch, a in SAM_ARCHS.items():
        if a["encoder_embed_dim"] == dim and a["encoder_depth"] == depth:
            return {**SAM_DEFAULTS, **a}
    raise ValueError(f"{path}: unknown SAM encoder (dim {dim}, depth {depth}); expected ViT-B/L/H")


def load_sam(spec: SamSpec, checkpoints: Path, *, device: str = "cpu", offline: bool = False):
    """Build the model of ``spec`` and load its verified weights (random init if it has none)."""
    import torch

    from segsearch.models.weights import ensure_weights

    if spec.weights is None:
        torch.manual_seed(spec.seed)
        sam = build_sam_model(spec.config)
    else:
        path = ensure_weights(spec.weights, checkpoints, offline=offline)
        sam = build_sam_model(spec.config)
        sam.load_state_dict(load_state_dict(path))
    return sam.to(device).eval()
