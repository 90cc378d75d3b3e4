"""CLIP through open_clip: one factory from a spec to (model, preprocess, tokenizer), and the
``ClipEmbedder`` shared by the indexer and the query service."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import numpy as np

from segsearch.models.registry import ClipSpec

_CFG_LOCK = threading.Lock()


def _register_cfg(spec: ClipSpec) -> str:
    """Make a custom open_clip config known to open_clip under the spec's model name."""
    import open_clip

    with _CFG_LOCK:
        if (
            spec.model_name not in open_clip.list_models()
            or open_clip.get_model_config(spec.model_name) != spec.model_cfg
        ):
            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / f"{spec.model_name}.json"
                p.write_text(json.dumps(spec.model_cfg))
                open_clip.add_model_config(p)
    return spec.model_name


def create_clip(spec: ClipSpec, checkpoints: Path, *, device: str = "cpu", offline: bool = False):
    """open_clip's factory, fed a verified local checkpoint: returns (model, preprocess, tokenizer)."""
    import open_clip
    import torch

    from segsearch.models.weights import ensure_weights

    name = _register_cfg(spec) if spec.model_cfg else spec.model_name
    pretrained = None
    if spec.weights is not None:
        pretrained = str(ensure_weights(spec.weights, checkpoints, offline=offline))
    else:
        torch.manual_seed(spec.seed)
    # A local file carries no pretrained tag, so open_clip would preprocess with OpenAI's defaults:
    # give it the tag's own mean/std/resize (SigLIP and PE use other values).
    pre = {}
    if spec.pretrained_tag:
        cfg = open_clip.get_pretrained_cfg(spec.model_name, spec.pretrained_tag)
        pre = {
            k_out: cfg[k_in]
            for k_in, k_out in (
                ("mean", "image_mean"),
                ("std", "image_std"),
                ("interpolation", "image_interpolation"),
                ("resize_mode", "image_resize_mode"),
            )
            if cfg.get(k_in)
        }
    model, _, preprocess = open_clip.create_model_and_transforms(
        name,
        pretrained=pretrained,
        device=device,
        force_quick_gelu=spec.quick_gelu,
        # TorchScript archives (OpenAI's original releases) cannot be read with weights_only; the
        # file's SHA-256 was verified just above.
        weights_only=not spec.jit_archive,
        **pre,
    )
    try:
        tokenizer = open_clip.get_tokenizer(name)
    except ImportError as exc:
        from segsearch.errors import ConfigError

        raise ConfigError(f"CLIP model {spec.name} needs {spec.needs or 'more packages'}: {exc}") from exc
    return model.eval(), preprocess, tokenizer


def quantize_image_tower(model, device: str) -> None:
    """``clip_precision = "int8"``: the image tower's linear layers (its MLPs, most of its work) run
    int8 weights with activations quantised per batch (PyTorch's dynamic quantisation, FBGEMM on
    x86). The text tower stays fp32: queries are few and must match the NumPy text tower."""
    import torch

    from segsearch.errors import ConfigError

    if device != "cpu":
        raise ConfigError(f"clip_precision int8 is for CPUs (dynamic quantisation); this CLIP runs on {device}")
    import warnings

    with warnings.catch_warnings():  # torch 2.10+ announces its quantized tensors' move to torchao
        warnings.simplefilter("ignore", UserWarning)
        model.visual = torch.ao.quantization.quantize_dynamic(model.visual, {torch.nn.Linear}, dtype=torch.qint8)


class ClipEmbedder:
    """Batched, L2-normalised CLIP image and text vectors (float32 numpy)."""

    def __init__(self, spec: ClipSpec, model, preprocess, tokenizer, device: str = "cpu", batch_size: int = 32):
        self.spec = spec
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.dim = int(
            model.text_projection.shape[1]
            if getattr(model, "text_projection", None) is not None
            else model.visual.output_dim
        )

    @classmethod
    def from_spec(
        cls,
        spec: ClipSpec,
        checkpoints: Path,
        *,
        device: str = "cpu",
        offline: bool = False,
        batch_size: int = 32,
        precision: str = "fp32",
    ) -> ClipEmbedder:
        model, preprocess, tokenizer = create_clip(spec, checkpoints, device=device, offline=offline)
        if precision == "int8":
            quantize_image_tower(model, device)
        elif precision == "bf16":
            # bfloat16 weights, not autocast: autocast re-casts every weight on every call, which took
            # more time than the products it sped up (ViT-B/32 on a CPU: 46 vs 26 ms per crop)
            import torch

            model.visual.to(torch.bfloat16)
        return cls(spec, model, preprocess, tokenizer, device, batch_size)

    @property
    def _image_dtype(self):
        return next(self.model.visual.parameters()).dtype  # (int8: its float parts; its layers take float32)

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def embed_images(self, images) -> np.ndarray:
        """``images``: PIL images (any size; preprocess resizes)."""
        import torch

        out = []
        for i in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[i : i + self.batch_size]])
            batch = batch.to(self.device, dtype=self._image_dtype)
            with torch.inference_mode():
                feats = self.model.encode_image(batch)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[i : i + self.batch_size]).to(self.device)
            with torch.inference_mode():
                feats = self.model.encode_text(tokens)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
