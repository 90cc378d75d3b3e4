"""Build a ``segment_anything.modeling.Sam`` from a spec config (any size) and load weights.

Mirrors ``segment_anything.build_sam._build_sam`` but with every dimension taken from the
config, so the official ViT-B/L/H and our small models share one builder and one loader.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from segsearch.models.registry import SAM_DEFAULTS, SamSpec, known_sam_configs


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
    """Architecture of a SAM checkpoint file, read from its tensor shapes: the official ViT-B/L/H and
    any other SAM-family model (our small ones, or one fine-tuned at another input size): input size
    from the position embedding, heads from the relative-position tables, global blocks from which
    tables span the whole grid. The decoder's head count leaves no trace in the weights: it is taken
    from a known architecture with the same shapes, else SAM's 8."""
    state = load_state_dict(path)
    try:
        return config_from_state(state)
    except KeyError as exc:
        raise ValueError(f"{path} is not a Segment Anything checkpoint (no {exc.args[0]})") from exc


def config_from_state(state: dict) -> dict:
    proj = state["image_encoder.patch_embed.proj.weight"]
    dim, patch = proj.shape[0], proj.shape[-1]
    grid = state["image_encoder.pos_embed"].shape[1]
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    rel = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
    global_idx = [i for i, r in enumerate(rel) if r[0] == 2 * grid - 1]
    windowed = [r[0] for r in rel if r[0] != 2 * grid - 1]
    c = {
        "image_size": grid * patch,
        "vit_patch_size": patch,
        "encoder_embed_dim": dim,
        "encoder_depth": depth,
        "encoder_num_heads": dim // rel[0][1],
        "encoder_global_attn_indexes": global_idx,
        "encoder_window_size": (windowed[0] + 1) // 2 if windowed else SAM_DEFAULTS["encoder_window_size"],
        "encoder_mlp_ratio": state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / dim,
        "prompt_embed_dim": state["mask_decoder.iou_token.weight"].shape[1],
        "decoder_depth": len({k.split(".")[3] for k in state if k.startswith("mask_decoder.transformer.layers.")}),
        "decoder_mlp_dim": state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        "iou_head_hidden_dim": state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
    }
    same = [k for k in known_sam_configs() if all(k.get(f) == v for f, v in c.items() if f != "image_size")]
    c["decoder_num_heads"] = same[0]["decoder_num_heads"] if same else SAM_DEFAULTS["decoder_num_heads"]
    return {**SAM_DEFAULTS, **c}


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


class PromptSegmenter:
    """Point/box prompts on one image -> masks, with SAM's image embeddings cached by a key the
    caller gives (the image's content hash or id): repeated prompts on one image only run the
    light prompt encoder and mask decoder. Calls are serialised (one model instance)."""

    def __init__(self, sam, *, cache_images: int = 16, lock=None):
        import threading
        from collections import OrderedDict

        self.sam = sam
        self.cache_images = cache_images
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._lock = lock or threading.Lock()  # a server shares one lock over all its torch calls

    def predict(self, key: str, rgb, *, points=None, labels=None, box_xyxy=None, multimask: bool = True):
        """``(masks (N, H, W) bool, scores (N,), cached)`` for the prompts; ``cached`` says whether
        the image embedding came from the cache."""
        import numpy as np
        import torch
        from segment_anything import SamPredictor

        with self._lock:
            predictor = SamPredictor(self.sam)
            state = self._cache.get(key)
            if state is not None:
                self._cache.move_to_end(key)
                predictor.reset_image()
                predictor.features = state["features"]
                predictor.original_size, predictor.input_size = state["original_size"], state["input_size"]
                predictor.is_image_set = True
            else:
                with torch.inference_mode():
                    predictor.set_image(rgb)
                self._cache[key] = {
                    "features": predictor.features,
                    "original_size": predictor.original_size,
                    "input_size": predictor.input_size,
                }
                while len(self._cache) > self.cache_images:
                    self._cache.popitem(last=False)
            box = None if box_xyxy is None else np.asarray(box_xyxy, np.float32)
            with torch.inference_mode():
                masks, scores, _ = predictor.predict(
                    point_coords=points, point_labels=labels, box=box, multimask_output=multimask
                )
        return masks.astype(bool), scores, state is not None
