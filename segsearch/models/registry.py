"""Named model specs, in the spirit of segment_anything's ``sam_model_registry`` and
open_clip's named configs + pretrained tags.

A spec is pure data: architecture + where its weights come from. ``segsearch.models.sam``
and ``segsearch.models.clip`` turn a spec into a live model; both use the same code path
for official checkpoints, bundled small ones and user-supplied files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from segsearch.errors import ConfigError


@dataclass(frozen=True)
class Weights:
    """A checkpoint file: where to fetch it and how to recognise a good copy.

    ``filename`` is relative to the checkpoints folder, or absolute for a user's file.
    ``url`` None means the file is shipped with the repo (bundled) or placed by the user.
    """

    filename: str
    sha256: str
    url: str | None = None
    size: int | None = None


# SAM architectures as in segment_anything.build_sam, plus room for small custom ones.
SAM_ARCHS: dict[str, dict] = {
    "vit_b": {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12,
              "encoder_global_attn_indexes": [2, 5, 8, 11]},
    "vit_l": {"encoder_embed_dim": 1024, "encoder_depth": 24, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {"encoder_embed_dim": 1280, "encoder_depth": 32, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [7, 15, 23, 31]},
}

SAM_DEFAULTS = {
    "prompt_embed_dim": 256,
    "image_size": 1024,
    "vit_patch_size": 16,
    "encoder_window_size": 14,
    "encoder_mlp_ratio": 4.0,
    "decoder_depth": 2,
    "decoder_mlp_dim": 2048,
    "decoder_num_heads": 8,
    "iou_head_hidden_dim": 256,
}


def sam_config(arch: str, **overrides) -> dict:
    return {**SAM_DEFAULTS, **SAM_ARCHS[arch], **overrides}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class SamSpec:
    name: str
    config: dict  # full architecture: SAM_DEFAULTS + encoder dims
    weights: Weights | None  # None: random init (tests, timing benchmarks)
    description: str = ""
    seed: int = 0

    @property
    def fingerprint(self) -> str:
        origin = self.weights.sha256 if self.weights else f"random{self.seed}-{_digest(self.config)}"
        return f"{self.name}@{origin[:16]}"


@dataclass(frozen=True)
class ClipSpec:
    name: str
    model_name: str  # open_clip architecture name
    weights: Weights | None  # None: random init
    model_cfg: dict | None = None  # custom open_clip config (small bundled/test models)
    quick_gelu: bool = False
    jit_archive: bool = False  # OpenAI releases are TorchScript archives
    description: str = ""
    seed: int = 0

    @property
    def fingerprint(self) -> str:
        if self.weights:
            origin = self.weights.sha256
        else:
            origin = f"random{self.seed}-{_digest(self.model_cfg or self.model_name)}"
        return f"{self.name}@{origin[:16]}"

    @property
    def image_size(self) -> int:
        """Input side of the vision tower (crops are cut at this size), from the config alone."""
        cfg = self.model_cfg
        if cfg is None:
            from open_clip import get_model_config

            cfg = get_model_config(self.model_name)
        size = cfg["vision_cfg"]["image_size"]
        return int(size[0] if isinstance(size, (tuple, list)) else size)


_SAM: dict[str, SamSpec] = {}
_CLIP: dict[str, ClipSpec] = {}


def register_sam(spec: SamSpec) -> SamSpec:
    _SAM[spec.name] = spec
    return spec


def register_clip(spec: ClipSpec) -> ClipSpec:
    _CLIP[spec.name] = spec
    return spec


# --- official checkpoints -------------------------------------------------------------------
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
for _name, _arch, _file, _sha, _size, _params in [
    ("sam-vit-b", "vit_b", "sam_vit_b_01ec64.pth",
     "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383, "91M"),
    ("sam-vit-l", "vit_l", "sam_vit_l_0b3195.pth",
     "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607, "308M"),
    ("sam-vit-h", "vit_h", "sam_vit_h_4b8939.pth",
     "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879, "636M"),
]:
    register_sam(SamSpec(_name, sam_config(_arch), Weights(_file, _sha, _SAM_URL + _file, _size),
                         f"Segment Anything {_arch} (Meta, {_params} params)"))

# OpenAI CLIP releases: the SHA-256 is the URL's directory name (open_clip checks it the same way).
_OPENAI = "https://openaipublic.azureedge.net/clip/models/"
for _name, _arch, _sha in [
    ("clip-vit-b-32", "ViT-B-32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
    ("clip-vit-b-16", "ViT-B-16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"),
    ("clip-vit-l-14", "ViT-L-14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"),
]:
    register_clip(ClipSpec(
        _name, _arch, Weights(f"openai-{_arch}.pt", _sha, f"{_OPENAI}{_sha}/{_arch}.pt"),
        quick_gelu=True, jit_archive=True, description=f"OpenAI CLIP {_arch} (open_clip '{_arch}', 'openai')"))


# --- bundled small models trained by this repo on the shapes world (training/) ------------------------
SAM_SHAPES_TINY_CONFIG = sam_config(
    "vit_b", image_size=512, vit_patch_size=16, encoder_embed_dim=96, encoder_depth=4, encoder_num_heads=3,
    encoder_global_attn_indexes=[1, 3], encoder_window_size=5, prompt_embed_dim=64, decoder_depth=2,
    decoder_mlp_dim=256, decoder_num_heads=4, iou_head_hidden_dim=64)

CLIP_SHAPES_TINY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

register_sam(SamSpec("sam-shapes-tiny", SAM_SHAPES_TINY_CONFIG, Weights(
    "sam-shapes-tiny.pt", "c3bedf10ed0910889b6bed51d84adae52cc2928f972e2c4c593c8f2c71de68e3"),
    "bundled: tiny SAM trained on the shapes world (training/train_sam.py)"))

register_clip(ClipSpec("clip-shapes-tiny", "segsearch-shapes-tiny", Weights(
    "clip-shapes-tiny.pt", "7d1cee5ed18675027501c4824d91327750b971ce39c956bb12372e43f5c83320"),
    model_cfg=CLIP_SHAPES_TINY_CFG,
    description="bundled: tiny CLIP trained on shapes-world crops (training/train_clip.py)"))


# --- lookup ---------------------------------------------------------------------------------
def known_sam_configs() -> list[dict]:
    """The architectures of the registered SAM models (official ones first)."""
    return [s.config for s in _SAM.values()]


def get_sam_spec(name_or_path: str) -> SamSpec:
    """A registered name, or a path to a SAM checkpoint (architecture inferred from its weights)."""
    if name_or_path in _SAM:
        return _SAM[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        from segsearch.models.sam import infer_sam_config
        from segsearch.models.weights import sha256_file

        return SamSpec(f"file:{path.name}", infer_sam_config(path),
                       Weights(str(path.resolve()), sha256_file(path)), f"user checkpoint {path}")
    raise ConfigError(
        f"Unknown SAM model {name_or_path!r}: not a registered name ({', '.join(sorted(_SAM))}) "
        "nor an existing checkpoint file. See `segsearch models list`."
    )


def get_clip_spec(name_or_path: str, arch: str = "ViT-B-32") -> ClipSpec:
    """A registered name, or an open_clip checkpoint file whose architecture is ``arch``."""
    if name_or_path in _CLIP:
        return _CLIP[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        from segsearch.models.weights import sha256_file

        return ClipSpec(f"file:{path.name}", arch, Weights(str(path.resolve()), sha256_file(path)),
                        description=f"user checkpoint {path} ({arch})")
    raise ConfigError(
        f"Unknown CLIP model {name_or_path!r}: not a registered name ({', '.join(sorted(_CLIP))}) "
        "nor an existing checkpoint file. See `segsearch models list`."
    )


def get_spec(name: str) -> SamSpec | ClipSpec:
    if name in _SAM:
        return _SAM[name]
    if name in _CLIP:
        return _CLIP[name]
    raise ConfigError(f"Unknown model {name!r}. Known: {', '.join(sorted([*_SAM, *_CLIP]))}")


def list_specs() -> list[dict]:
    rows = []
    for kind, reg in (("sam", _SAM), ("clip", _CLIP)):
        for spec in reg.values():
            w = spec.weights
            rows.append({
                "name": spec.name,
                "kind": kind,
                "description": spec.description,
                "file": w.filename if w else None,
                "url": w.url if w else None,
                "sha256": w.sha256 if w else None,
                "size": w.size if w else None,
                "bundled": bool(w and not w.url),
            })
    return rows
