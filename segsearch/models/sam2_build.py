"""Build a SAM 2 / 2.1 model (the ``sam2`` package's ``SAM2Base``) from a config file and load weights.

``sam2.build_sam.build_sam2`` composes configs through Hydra's package search (only the package's
own YAML files, global state) and builds on CUDA unless told otherwise. Here a config is any YAML
file in the same format, Meta's (``sam2:configs/sam2.1/sam2.1_hiera_t.yaml``) or ours
(``segsearch:models/configs/sam2_shapes_tiny.yaml``), loaded with OmegaConf and built with
``hydra.utils.instantiate``, with ``build_sam2``'s image post-processing settings, on the device
the caller names. Official checkpoints (``{"model": state_dict}``) and ours load by the same code.
"""

from __future__ import annotations

from pathlib import Path

# build_sam2(apply_postprocessing=True): a single-mask answer falls back to the most stable of
# the three multimask outputs when its own mask is unstable (as Meta's image predictor runs it)
POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}

# Hiera trunks of Meta's releases: (embed_dim, blocks) -> config suffix
OFFICIAL_TRUNKS = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}

MISSING = (
    "SAM 2 models need the `sam2` package: pip install 'segsearch[sam2]' (on a machine without a CUDA "
    "toolkit: SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0, after torch)"
)


def config_path(ref: str) -> Path:
    """``package:relative/path.yaml`` -> the file inside that installed package."""
    import importlib.util

    package, _, rel = ref.partition(":")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        from segsearch.errors import ConfigError

        raise ConfigError(MISSING if package == "sam2" else f"package {package!r} not found for {ref}")
    return Path(next(iter(spec.submodule_search_locations))) / rel


def build_sam2_model(config: dict):
    """A ``SAM2Base`` in eval mode on the CPU, random init. A YAML may size the mask decoder
    (top-level ``mask_decoder: {num_heads, mlp_dim, iou_head_hidden_dim}``): ``SAM2Base`` fixes
    those at Meta's values (8 heads, MLP 2048, IoU head 256) whatever ``d_model`` is."""
    try:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
    except ImportError as exc:  # pragma: no cover - the extra is missing
        from segsearch.errors import ConfigError

        raise ConfigError(MISSING) from exc
    cfg = OmegaConf.load(config_path(config["yaml"]))
    cfg.model.sam_mask_decoder_extra_args = dict(POSTPROCESSING)
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    if "mask_decoder" in cfg:
        _resize_mask_decoder(model, dict(cfg.mask_decoder))
    return model.eval()


def _resize_mask_decoder(model, dims: dict) -> None:
    """``SAM2Base._build_sam_heads``'s mask decoder, with the given head count, MLP and IoU-head widths."""
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.transformer import TwoWayTransformer

    model.sam_mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=dims.get("depth", 2),
            embedding_dim=model.sam_prompt_embed_dim,
            mlp_dim=dims["mlp_dim"],
            num_heads=dims["num_heads"],
        ),
        transformer_dim=model.sam_prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=dims["iou_head_hidden_dim"],
        use_high_res_features=model.use_high_res_features_in_sam,
        iou_prediction_use_sigmoid=model.iou_prediction_use_sigmoid,
        pred_obj_scores=model.pred_obj_scores,
        pred_obj_scores_mlp=model.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr=model.use_multimask_token_for_obj_ptr,
        **(model.sam_mask_decoder_extra_args or {}),
    )


def load_sam2_state(path: Path) -> dict:
    """The state dict of a SAM 2 checkpoint: Meta's files hold ``{"model": state_dict}``."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return state


def is_sam2_state(state: dict) -> bool:
    return any(k.startswith("image_encoder.trunk.") for k in state)


def config_from_state(state: dict, known: list[dict]) -> dict:
    """The config of a SAM 2 checkpoint: a registered architecture whose tensors have the same
    shapes, else Meta's release with the same Hiera trunk (2.1 when the file has 2.1's
    ``no_obj_embed_spatial``, else 2.0)."""
    for cfg in known:
        if _shapes_match(cfg, state):
            return cfg
    trunk = state["image_encoder.trunk.patch_embed.proj.weight"].shape[0]
    blocks = len({k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")})
    size = OFFICIAL_TRUNKS.get((trunk, blocks))
    if size is None:
        raise ValueError(
            f"unknown SAM 2 architecture (Hiera {trunk} channels, {blocks} blocks); "
            "register its config in segsearch.models.registry"
        )
    version = "sam2.1/sam2.1" if "no_obj_embed_spatial" in state else "sam2/sam2"
    return {"family": "sam2", "yaml": f"sam2:configs/{version}_hiera_{size}.yaml", "image_size": 1024}


def _shapes_match(cfg: dict, state: dict) -> bool:
    ref = build_sam2_model(cfg).state_dict()  # (only small custom configs are compared this way)
    return ref.keys() == state.keys() and all(ref[k].shape == state[k].shape for k in ref)
