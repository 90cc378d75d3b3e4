"""Named model specs, in the spirit of segment_anything's ``sam_model_registry`` and
open_clip's named configs + pretrained tags.

A spec is pure data: architecture + where its weights come from. ``segsearch.models.sam``
and ``segsearch.models.clip`` turn a spec into a live model; both use the same code path
for official checkpoints, bundled small ones and user-supplied files.
"""

from __future__ import annotations

import functools
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
# The generators' other defaults (both families): a 32x32 grid, stability 0.95, no clean-up.
GENERATOR_DEFAULTS = {"points_per_side": 32, "stability_score_thresh": 0.95, "min_mask_region_area": 0}


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
    amg_defaults: dict | None = None  # generator settings it runs with unless the user sets them

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
        if self.family == "sam2":
            return "sam2 (pip install 'segsearch[sam2]')"
        if str(self.config.get("encoder", "")).startswith("efficientvit"):
            return "efficientsam (pip install 'segsearch[efficientvit]')"
        return ""


def amg_defaults(spec: SamSpec) -> dict:
    """Generator settings a model runs with when the user sets none: its own (``spec.amg_defaults``,
    e.g. a bundled model's tuned ones), else its family's generator defaults."""
    return {**GENERATOR_DEFAULTS, **FAMILY_AMG_DEFAULTS[spec.family], **(spec.amg_defaults or {})}


def amg_params(settings) -> dict:
    """Parameters handed to the mask generator (part of the model fingerprint): the settings' own,
    unset ones resolved to the SAM model's defaults (``amg_defaults``)."""
    given = settings.given_amg_params()
    if any(v is None for v in given.values()):
        defaults = amg_defaults(get_sam_spec(settings.sam))
        given = {k: defaults[k] if v is None else v for k, v in given.items()}
    return given


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
        st = path.stat()
        return _file_sam_spec(str(path.resolve()), st.st_size, st.st_mtime_ns)
    raise ConfigError(
        f"Unknown SAM model {name_or_path!r}: not a registered name ({', '.join(sorted(_SAM))}) "
        "nor an existing checkpoint file. See `segsearch models list`."
    )


@functools.lru_cache(maxsize=8)
def _file_sam_spec(path: str, size: int, mtime_ns: int) -> SamSpec:
    """The spec of a checkpoint file, read (architecture) and hashed once per version of the file."""
    from segsearch.models.sam import infer_sam_config
    from segsearch.models.weights import sha256_file

    p = Path(path)
    config = infer_sam_config(p)
    return SamSpec(
        f"file:{p.name}",
        config,
        Weights(path, sha256_file(p)),
        f"user checkpoint {p}",
        family=config.get("family", "sam1"),
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


# The models segsearch ships specs for (official releases and the bundled small ones) register
# themselves on import; at the end so that module can use everything above.
from segsearch.models import known as _known  # noqa: E402,F401
