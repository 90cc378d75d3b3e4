"""Build a Segment Anything model from a spec and load its weights: SAM 1 (a
``segment_anything.modeling.Sam``; mirrors ``segment_anything.build_sam._build_sam`` but with every
dimension taken from the config, so the official ViT-B/L/H and our small models share one builder)
or SAM 2 / 2.1 (``segsearch.models.sam2_build``). ``PromptSegmenter`` runs point/box prompts on
either family.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from segsearch.models.registry import SAM_DEFAULTS, SamSpec, known_sam_configs


def build_sam_model(config: dict):
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    c = {**SAM_DEFAULTS, **config}
    prompt_dim = c["prompt_embed_dim"]
    image_size = c["image_size"]
    emb_size = image_size // c["vit_patch_size"]
    if c.get("encoder"):  # another image encoder in front of SAM's prompt encoder and mask decoder
        from segsearch.models.efficientvit import efficientvit_encoder

        encoder = efficientvit_encoder(c["encoder"], image_size)
    else:
        encoder = ImageEncoderViT(
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
        )
    sam = Sam(
        image_encoder=encoder,
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


def is_sam2(model) -> bool:
    """Whether a live model is SAM 2 (``sam2``'s ``SAM2Base``) rather than SAM 1 (``Sam``)."""
    return hasattr(model, "sam_mask_decoder")


def infer_sam_config(path: Path) -> dict:
    """Architecture of a SAM checkpoint file, read from its tensor shapes: the official ViT-B/L/H and
    any other SAM-family model (our small ones, or one fine-tuned at another input size): input size
    from the position embedding, heads from the relative-position tables, global blocks from which
    tables span the whole grid. The decoder's head count leaves no trace in the weights: it is taken
    from a known architecture with the same shapes, else SAM's 8."""
    from segsearch.models import sam2_build

    state = load_state_dict(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # Meta's SAM 2 checkpoints
    if sam2_build.is_sam2_state(state):
        from segsearch.models.registry import known_sam_configs

        custom = [c for c in known_sam_configs("sam2") if c["yaml"].startswith("segsearch:")]
        return sam2_build.config_from_state(state, custom)
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

    if spec.family == "sam2":
        from segsearch.models.sam2_build import build_sam2_model, load_sam2_state

        build, load = build_sam2_model, load_sam2_state
    else:
        build, load = build_sam_model, load_state_dict
    if spec.weights is None:
        torch.manual_seed(spec.seed)
        sam = build(spec.config)
    else:
        path = ensure_weights(spec.weights, checkpoints, offline=offline)
        sam = build(spec.config)
        sam.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load(path).items()})
    return sam.to(device).eval()


PRECISIONS = ("fp32", "bf16")


def set_precision(sam, precision: str) -> None:
    """``sam_precision``: the image encoder's weights and activations in ``bf16`` (bfloat16) or
    ``fp32``. The encoder's blocks are most of a photo's matrix work; its neck (the last
    convolutions and LayerNorms, ~1% of the work) stays fp32, which halved the features' error
    (bundled SAM: 0.59% -> 0.31% relative). The prompt encoder and the mask decoder stay fp32 (the
    decoder's LayerNorm statistics and IoU/stability scores are thresholds' inputs), except the
    mask head's two products (``grid_decoder.Upscaler``), which follow the encoder. The features
    leave the encoder as float32, so every caller (the official predictors too) sees what it expects.
    On a CPU with AVX512-BF16 or AMX, bf16 matrix products run ~3x faster than fp32; without them
    they are emulated (slower, same results). Idempotent."""
    import torch

    if precision not in PRECISIONS:
        from segsearch.errors import ConfigError

        raise ConfigError(f"unknown SAM precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    enc = sam.image_encoder
    if hasattr(enc, "precision"):  # an encoder that runs its own reduced precision (EfficientViT's)
        enc.precision = precision
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if next(enc.parameters()).dtype != dtype:
        enc.to(dtype)
        if getattr(enc, "neck", None) is not None:
            enc.neck.float()
    if not getattr(enc, "_segsearch_casts", False):
        enc.register_forward_pre_hook(_cast_in)  # (module functions: a model is pickled to SAM workers)
        enc.register_forward_hook(_cast_out)
        if getattr(enc, "neck", None) is not None:
            enc.neck.register_forward_pre_hook(_cast_in)
        enc._segsearch_casts = True


def precision_of(sam) -> str:
    import torch

    enc = sam.image_encoder
    if hasattr(enc, "precision"):
        return enc.precision
    return "bf16" if next(enc.parameters()).dtype == torch.bfloat16 else "fp32"


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def _cast_in(mod, args):
    return _cast(args, next(mod.parameters()).dtype)


def _cast_out(mod, args, out):
    import torch

    return _cast(out, torch.float32)


def _cast(value, dtype):
    """``value`` with every floating tensor in it (tuples, lists, dicts) cast to ``dtype``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def image_predictor(model):
    """The family's own image predictor around ``model``: ``SamPredictor`` or ``SAM2ImagePredictor``
    (its feature-map sizes follow the model's input size; the package assumes 1024 px)."""
    if not is_sam2(model):
        from segment_anything import SamPredictor

        return SamPredictor(model)
    import warnings

    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():  # SAM2Transforms uses torch.jit.script, deprecated in torch 2.10+
        warnings.simplefilter("ignore", FutureWarning)
        return fit_feature_sizes(SAM2ImagePredictor(model))


def fit_feature_sizes(pred):
    """A ``SAM2ImagePredictor`` whose feature-map sizes follow its model's input size (the package
    hard-codes those of 1024 px)."""
    s = pred.model.image_size
    pred._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return pred


class Prompted(NamedTuple):
    masks: Any  # (N, H, W) bool
    scores: Any  # (N,) predicted IoU
    cached: bool  # the image embedding came from the cache
    logits: Any  # (N, h, w) low-resolution logits: the next call's mask_input refines mask i


class PromptSegmenter:
    """Point/box prompts on one image -> masks, with SAM's image embeddings cached by a key the
    caller gives (the image's content hash or id): repeated prompts on one image only run the
    light prompt encoder and mask decoder. Either family; a previous answer's low-resolution logits
    given back as ``mask_input`` refine it (SAM's iterative prompting). Calls are serialised (one
    model instance)."""

    def __init__(self, sam, *, cache_images: int = 16, lock=None):
        import threading
        from collections import OrderedDict

        self.sam = sam
        self.sam2 = is_sam2(sam)
        self.cache_images = cache_images
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._lock = lock or threading.Lock()  # a server shares one lock over all its torch calls
        self._predictor = image_predictor(sam)

    @property
    def low_res_shape(self) -> tuple[int, int]:
        """The side of the low-resolution logits (what ``mask_input`` must have)."""
        side = (self.sam.image_size if self.sam2 else self.sam.image_encoder.img_size) // 4
        return side, side

    _STATE = {
        False: ("features", "original_size", "input_size"),
        True: ("_features", "_orig_hw"),
    }

    def predict(
        self, key: str, rgb, *, points=None, labels=None, box_xyxy=None, multimask: bool = True, mask_input=None
    ) -> Prompted:
        """Masks for the prompts on ``rgb`` (whose embedding is cached under ``key``)."""
        import numpy as np
        import torch

        pred, fields = self._predictor, self._STATE[self.sam2]
        with self._lock:
            state = self._cache.get(key)
            if state is not None:
                self._cache.move_to_end(key)
                for f in fields:
                    setattr(pred, f, state[f])
                if self.sam2:
                    pred._is_image_set, pred._is_batch = True, False
                else:
                    pred.is_image_set = True
            else:
                with torch.inference_mode():
                    pred.set_image(rgb)
                self._cache[key] = {f: getattr(pred, f) for f in fields}
                while len(self._cache) > self.cache_images:
                    self._cache.popitem(last=False)
            box = None if box_xyxy is None else np.asarray(box_xyxy, np.float32)
            mask = None if mask_input is None else np.asarray(mask_input, np.float32).reshape(1, *self.low_res_shape)
            with torch.inference_mode():
                masks, scores, logits = pred.predict(
                    point_coords=points, point_labels=labels, box=box, mask_input=mask, multimask_output=multimask
                )
        return Prompted(np.asarray(masks).astype(bool), np.asarray(scores), state is not None, np.asarray(logits))
