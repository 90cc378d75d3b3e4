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
from segsearch.models.hub import HubWeights


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
    "vit_b": {
        "encoder_embed_dim": 768,
        "encoder_depth": 12,
        "encoder_num_heads": 12,
        "encoder_global_attn_indexes": [2, 5, 8, 11],
    },
    "vit_l": {
        "encoder_embed_dim": 1024,
        "encoder_depth": 24,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": [5, 11, 17, 23],
    },
    "vit_h": {
        "encoder_embed_dim": 1280,
        "encoder_depth": 32,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": [7, 15, 23, 31],
    },
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


# Each family's generator defaults where they differ (SamAutomaticMaskGenerator vs
# SAM2AutomaticMaskGenerator): used when the setting is left unset.
FAMILY_AMG_DEFAULTS = {"sam1": {"pred_iou_thresh": 0.88}, "sam2": {"pred_iou_thresh": 0.8}}


def sam_config(arch: str, **overrides) -> dict:
    return {**SAM_DEFAULTS, **SAM_ARCHS[arch], **overrides}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class SamSpec:
    """A Segment Anything model of either family: ``sam1`` (``segment_anything``; ``config`` is
    SAM_DEFAULTS + encoder dims) or ``sam2`` (the ``sam2`` package; ``config`` names its YAML)."""

    name: str
    config: dict
    weights: Weights | HubWeights | None  # None: random init (tests, timing benchmarks)
    description: str = ""
    seed: int = 0
    licence: str = ""
    cost: str = ""  # relative compute per image, for `models list`
    family: str = "sam1"
    mirror: str | None = None  # another official source of the same file (Meta's URL for SAM 2.1)

    @property
    def fingerprint(self) -> str:
        w = self.weights
        if isinstance(w, HubWeights):
            origin = w.sha256 or hashlib.sha256(w.identity.encode()).hexdigest()
        elif w is not None:
            origin = w.sha256
        else:
            origin = f"random{self.seed}-{_digest(self.config)}"
        return f"{self.name}@{origin[:16]}"

    @property
    def needs(self) -> str:
        return "sam2 (pip install 'segsearch[sam2]')" if self.family == "sam2" else ""


@dataclass(frozen=True)
class ClipSpec:
    """open_clip's pattern: an architecture name plus a pretrained tag (whose preprocessing,
    mean/std/resize, is open_clip's own for that tag), with the weights' location pinned here."""

    name: str
    model_name: str  # open_clip architecture name
    weights: Weights | HubWeights | None  # None: random init
    model_cfg: dict | None = None  # custom open_clip config (small bundled/test models)
    quick_gelu: bool = False
    jit_archive: bool = False  # a TorchScript archive (OpenAI's original .pt releases, user files)
    description: str = ""
    seed: int = 0
    pretrained_tag: str | None = None  # open_clip tag: preprocessing as open_clip defines it for that tag
    dim: int | None = None
    licence: str = ""
    cost: str = ""  # relative image-encoder compute, for `models list`
    needs: str = ""  # extra packages the model needs beyond segsearch's dependencies

    @property
    def fingerprint(self) -> str:
        if isinstance(self.weights, HubWeights):
            origin = (
                hashlib.sha256(self.weights.identity.encode()).hexdigest()
                if not self.weights.sha256
                else self.weights.sha256
            )
        elif self.weights:
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
# Cost: image-encoder compute relative to ViT-B (the decoder is the same for all three).
for _name, _arch, _file, _sha, _size, _params, _cost in [
    (
        "sam-vit-b",
        "vit_b",
        "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        375_042_383,
        "91M",
        "1x",
    ),
    (
        "sam-vit-l",
        "vit_l",
        "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        1_249_524_607,
        "308M",
        "3x",
    ),
    (
        "sam-vit-h",
        "vit_h",
        "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        2_564_550_879,
        "636M",
        "6x",
    ),
]:
    register_sam(
        SamSpec(
            _name,
            sam_config(_arch),
            Weights(_file, _sha, _SAM_URL + _file, _size),
            f"Segment Anything {_arch} (Meta, {_params} params)",
            licence="Apache-2.0",
            cost=_cost,
        )
    )

# SAM 2.1 (Meta, 2024-09-28 release). Meta publishes no SHA-256 for these files and we found no public
# record of one, so they are trust on first use: the Hugging Face copy (Meta's own `facebook` org) is
# fetched with the hub machinery, its commit and hash recorded at the first download; Meta's URL is
# listed as the mirror. Cost: image-encoder compute relative to SAM ViT-B at 1024 px.
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
for _name, _cfg, _file, _params, _cost in [
    ("sam2.1-hiera-tiny", "t", "sam2.1_hiera_tiny.pt", "38.9M", "0.25x"),
    ("sam2.1-hiera-small", "s", "sam2.1_hiera_small.pt", "46M", "0.3x"),
    ("sam2.1-hiera-base-plus", "b+", "sam2.1_hiera_base_plus.pt", "80.8M", "0.6x"),
    ("sam2.1-hiera-large", "l", "sam2.1_hiera_large.pt", "224.4M", "1.7x"),
]:
    register_sam(
        SamSpec(
            _name,
            {"family": "sam2", "yaml": f"sam2:configs/sam2.1/sam2.1_hiera_{_cfg}.yaml", "image_size": 1024},
            HubWeights(f"facebook/{_name}", _file),
            f"Segment Anything 2.1 Hiera-{_cfg.upper()} (Meta, {_params} params)",
            licence="Apache-2.0",
            cost=_cost,
            family="sam2",
            mirror=_SAM2_URL + _file,
        )
    )

# CLIP models users pick in 2026, from the Hugging Face Hub (open_clip 3.x fetches its `openai` tags there
# too: OpenAI's CDN answers 404 since 2025-10). OpenAI weights need QuickGELU (the `-quickgelu` configs).
# Pinned where a public source shows the commit and the file's SHA-256; otherwise trust on first use
# (segsearch.models.hub), and `models list` says so. Cost: image-encoder compute relative to ViT-B/32.
# clip-vit-b-32's pin: revision a6f597a3… and open_clip_model.safetensors 605,143,284 bytes,
# SHA-256 e6d1bd77…, as several public projects record them (HfApi model_info + downloaded file).
for _name, _arch, _tag, _repo, _file, _rev, _sha, _size, _dim, _lic, _cost, _needs, _what in [
    (
        "clip-vit-b-32",
        "ViT-B-32-quickgelu",
        "openai",
        "timm/vit_base_patch32_clip_224.openai",
        "open_clip_model.safetensors",
        "a6f597a30f7b82c51704746581f9a4e41421e878",
        "e6d1bd7789aa45192b3bf90570a789b478bae1b74ebcce7eddd908e83a2b7c31",
        605_143_284,
        512,
        "MIT",
        "1x",
        "",
        "OpenAI CLIP ViT-B/32, QuickGELU",
    ),
    (
        "clip-vit-b-16",
        "ViT-B-16-quickgelu",
        "openai",
        "timm/vit_base_patch16_clip_224.openai",
        "open_clip_model.safetensors",
        None,
        None,
        None,
        512,
        "MIT",
        "4x",
        "",
        "OpenAI CLIP ViT-B/16, QuickGELU",
    ),
    (
        "clip-vit-l-14",
        "ViT-L-14-quickgelu",
        "openai",
        "timm/vit_large_patch14_clip_224.openai",
        "open_clip_model.safetensors",
        None,
        None,
        None,
        768,
        "MIT",
        "18x",
        "",
        "OpenAI CLIP ViT-L/14, QuickGELU",
    ),
    (
        "siglip2-vit-b-16",
        "ViT-B-16-SigLIP2",
        "webli",
        "timm/ViT-B-16-SigLIP2",
        "open_clip_model.safetensors",
        None,
        None,
        None,
        768,
        "Apache-2.0",
        "5x",
        "transformers, sentencepiece (its tokenizer)",
        "Google SigLIP 2 ViT-B/16 (WebLI)",
    ),
    (
        "datacomp-vit-l-14",
        "ViT-L-14",
        "datacomp_xl_s13b_b90k",
        "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K",
        "open_clip_pytorch_model.bin",
        None,
        None,
        None,
        768,
        "MIT",
        "18x",
        "",
        "DataComp-XL CLIP ViT-L/14 (LAION)",
    ),
    (
        "pe-core-b-16",
        "PE-Core-B-16",
        "meta",
        "timm/PE-Core-B-16",
        "open_clip_model.safetensors",
        None,
        None,
        None,
        1024,
        "Apache-2.0",
        "4x",
        "",
        "Meta Perception Encoder PE-Core-B/16",
    ),
]:
    register_clip(
        ClipSpec(
            _name,
            _arch,
            HubWeights(_repo, _file, _rev, _sha, _size),
            quick_gelu=_arch.endswith("quickgelu"),
            pretrained_tag=_tag,
            dim=_dim,
            licence=_lic,
            cost=_cost,
            needs=_needs,
            description=f"{_what} (open_clip '{_arch}', '{_tag}')",
        )
    )


# --- bundled small models trained by this repo on the shapes world (training/) ------------------------
SAM_SHAPES_TINY_CONFIG = sam_config(
    "vit_b",
    image_size=512,
    vit_patch_size=16,
    encoder_embed_dim=96,
    encoder_depth=4,
    encoder_num_heads=3,
    encoder_global_attn_indexes=[1, 3],
    encoder_window_size=5,
    prompt_embed_dim=64,
    decoder_depth=2,
    decoder_mlp_dim=256,
    decoder_num_heads=4,
    iou_head_hidden_dim=64,
)

SAM2_SHAPES_TINY_CONFIG = {
    "family": "sam2",
    "yaml": "segsearch:models/configs/sam2_shapes_tiny.yaml",
    "image_size": 512,  # (as in the YAML: the input side, for the request-size checks)
}

CLIP_SHAPES_TINY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

register_sam(
    SamSpec(
        "sam-shapes-tiny",
        SAM_SHAPES_TINY_CONFIG,
        Weights("sam-shapes-tiny.pt", "c3bedf10ed0910889b6bed51d84adae52cc2928f972e2c4c593c8f2c71de68e3"),
        "bundled: tiny SAM trained on the shapes world (training/train_sam.py); knows only coloured shapes",
        licence="Apache-2.0",
        cost="0.002x",
    )
)

register_sam(
    SamSpec(
        "sam2-shapes-tiny",
        SAM2_SHAPES_TINY_CONFIG,
        Weights("sam2-shapes-tiny.pt", "dc0abc2a46d3f6c68f5abafb855fbf2c06acfed7f9dea089c34214c3f50b6b89"),
        "bundled: tiny SAM 2.1 (the sam2 package's classes) trained on the shapes world (training/train_sam2.py); "
        "knows only coloured shapes",
        licence="Apache-2.0",
        cost="0.004x",
        family="sam2",
    )
)

register_clip(
    ClipSpec(
        "clip-shapes-tiny",
        "segsearch-shapes-tiny",
        Weights("clip-shapes-tiny.pt", "7d1cee5ed18675027501c4824d91327750b971ce39c956bb12372e43f5c83320"),
        model_cfg=CLIP_SHAPES_TINY_CFG,
        description="bundled: tiny CLIP trained on shapes-world crops (training/train_clip.py); knows only coloured "
        "shapes",
        dim=64,
        licence="Apache-2.0",
        cost="0.01x",
    )
)


# --- lookup ---------------------------------------------------------------------------------
def known_sam_configs(family: str = "sam1") -> list[dict]:
    """The architectures of the registered SAM models of one family (official ones first)."""
    return [s.config for s in _SAM.values() if s.family == family]


def get_sam_spec(name_or_path: str) -> SamSpec:
    """A registered name, or a path to a SAM checkpoint (architecture inferred from its weights)."""
    if name_or_path in _SAM:
        return _SAM[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        from segsearch.models.sam import infer_sam_config
        from segsearch.models.weights import sha256_file

        config = infer_sam_config(path)
        return SamSpec(
            f"file:{path.name}",
            config,
            Weights(str(path.resolve()), sha256_file(path)),
            f"user checkpoint {path}",
            family=config.get("family", "sam1"),
        )
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

        return ClipSpec(
            f"file:{path.name}",
            arch,
            Weights(str(path.resolve()), sha256_file(path)),
            description=f"user checkpoint {path} ({arch})",
        )
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
            hub = isinstance(w, HubWeights)
            if w is None:
                pin = "random init"
            elif hub:
                pin = w.pin_status
            else:
                pin = "pinned (SHA-256 in the registry)" if w.url else "bundled (SHA-256 in the registry)"
            rows.append(
                {
                    "name": spec.name,
                    "kind": kind,
                    "description": spec.description,
                    "file": w.filename if w else None,
                    "url": (w.url if not hub else getattr(spec, "mirror", None)) if w else None,
                    "hub_repo": w.repo if hub else None,
                    "revision": w.revision if hub else None,
                    "sha256": w.sha256 if w else None,
                    "size": w.size if w else None,
                    "pin": pin,
                    "dim": getattr(spec, "dim", None),
                    "licence": spec.licence,
                    "cost": spec.cost,
                    "needs": getattr(spec, "needs", ""),
                    "family": getattr(spec, "family", None),
                    "bundled": bool(w and not hub and not w.url),
                }
            )
    return rows
