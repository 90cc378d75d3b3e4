"""A library remembers its models.

A data directory records, at its first index, what it was indexed with (the ``library`` table,
migration 0003): the SAM model, the automatic-mask-generation and crop settings, and the CLIP
model, each model with its name, where it was loaded from and its SHA-256. Every command given no
model flags (``index``, ``search``, ``serve``, ``doctor``, ``info``) then uses the recorded ones,
so a library indexed with ``--sam sam-shapes-tiny --clip clip-shapes-tiny`` is searched with
``clip-shapes-tiny`` without anyone repeating it.

Asking for something else is explicit:

* ``index`` with models or settings other than the recorded ones stops (exit 2, naming what is
  recorded) unless ``--reindex`` is given; then the record is replaced and the images given are
  re-indexed (their pipeline fingerprint changes).
* ``search`` / ``serve`` with ``--clip X`` work when X's vector collection exists (an earlier
  model of this library), and otherwise list the models that have one.

"Explicit" means set by a flag, an environment variable or a config file; a default never
overrides the record (``Settings.model_fields_set``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from segsearch.errors import ConfigError
from segsearch.models import amg_params
from segsearch.settings import Settings

Purpose = Literal["index", "search", "serve", "doctor", "info"]

AMG_FIELDS = (
    "points_per_side",
    "pred_iou_thresh",
    "stability_score_thresh",
    "box_nms_thresh",
    "crop_n_layers",
    "min_mask_region_area",
    "prompts",
    "mask_side",
    "sam_precision",
)  # points_per_batch is speed only
# recorded AMG keys that mean this value when a record lacks them (recorded before the setting)
AMG_ABSENT = {"sam_precision": "fp32"}
CROP_FIELDS = {
    "mode": "crop_mode",
    "padding": "crop_padding",
    "min_area": "min_segment_area",
    "precision": "clip_precision",
}
# crop keys a record leaves out when they hold this value (recorded before the setting existed, or
# at its default): settings.crop_params() omits them so older fingerprints stay as they were
CROP_ABSENT = {"precision": "fp32"}
# Video sampling is recalled like the rest, but changing it needs no --reindex: it is part of a
# video's fingerprint only, so the next index redoes the videos and leaves the photos alone.
VIDEO_FIELDS = {
    "fps": "video_fps",
    "min_track_s": "min_track_seconds",
    "keyframe_s": "video_keyframe_seconds",
    "vector": "track_vector",
    "tracking": "video_tracking",
    "refresh_s": "video_refresh_seconds",
}


@dataclass
class Recorded:
    """The library table, as read (empty dicts when the data directory was never indexed)."""

    sam: dict
    clip: dict
    amg: dict
    crop: dict
    clips: list  # every CLIP model this library has had a collection for, newest last
    video: dict = field(default_factory=dict)  # video sampling (Settings.video_params)

    @property
    def empty(self) -> bool:
        return not (self.sam or self.clip)

    def to_dict(self) -> dict:
        return {
            "sam": self.sam,
            "clip": self.clip,
            "amg": self.amg,
            "crop": self.crop,
            "clips": self.clips,
            "video": self.video,
        }


def _source(name_or_path: str) -> str:
    """How a model is named in the record: a registered name as is, a file as its absolute path."""
    p = Path(name_or_path).expanduser()
    return str(p.resolve()) if p.is_file() else name_or_path


def sam_entry(settings: Settings) -> dict:
    from segsearch.models import get_sam_spec

    spec = get_sam_spec(settings.sam)
    return {
        "name": spec.name,
        "family": spec.family,
        "source": _source(settings.sam),
        "fingerprint": spec.fingerprint,
        "sha256": spec.weights.sha256 if spec.weights else None,
    }


def clip_entry(settings: Settings) -> dict:
    from segsearch.identity import collection_name
    from segsearch.models import get_clip_spec

    spec = get_clip_spec(settings.clip, settings.clip_arch)
    return {
        "name": spec.name,
        "source": _source(settings.clip),
        "arch": settings.clip_arch,
        "fingerprint": spec.fingerprint,
        "sha256": spec.weights.sha256 if spec.weights else None,
        "collection": collection_name(spec.fingerprint),
    }


def amg_entry(settings: Settings) -> dict:
    """The generator settings as run: unset ones resolved to the model's defaults, so the library
    keeps the numbers it was indexed with."""
    params = amg_params(settings)
    return {k: params[k] for k in AMG_FIELDS}


def crop_entry(settings: Settings) -> dict:
    return settings.crop_params()


def read(catalog) -> Recorded:
    """The record; a library indexed before the record existed is described by its last run."""
    rec = catalog.library()
    if not rec and catalog.has_indexed():
        rec = _from_last_run(catalog)
    return Recorded(
        rec.get("sam", {}),
        rec.get("clip", {}),
        rec.get("amg", {}),
        rec.get("crop", {}),
        rec.get("clips", {}).get("models", []),
        rec.get("video", {}),
    )


def _from_last_run(catalog) -> dict:
    run = catalog.last_run()
    if run is None or not isinstance(run.settings, dict):
        return {}
    s = run.settings
    if str(s.get("sam", "")).startswith("file:") or str(s.get("clip", "")).startswith("file:"):
        return {}  # a user file's path was not kept in the run: nothing reliable to recall
    from segsearch.models import get_clip_spec, get_sam_spec

    try:
        base = Settings(
            sam=s["sam"],
            clip=s["clip"],
            **{k: v for k, v in s.get("amg", {}).items() if k in AMG_FIELDS},
            **{CROP_FIELDS[k]: v for k, v in s.get("crop", {}).items() if k in CROP_FIELDS},
        )
        get_sam_spec(base.sam), get_clip_spec(base.clip)
    except (KeyError, ConfigError, ValueError):
        return {}
    return {"sam": sam_entry(base), "clip": clip_entry(base), "amg": amg_entry(base), "crop": crop_entry(base)}


def write(catalog, settings: Settings) -> None:
    """Before an index run with (resolved) ``settings``: write the record (a library's first index,
    or an explicit --reindex) unless it says so already. Each entry is computed once (a user's
    checkpoint file is hashed to name it)."""
    stored = catalog.library()
    current = read(catalog)
    entries = {
        "sam": sam_entry(settings),
        "clip": clip_entry(settings),
        "amg": amg_entry(settings),
        "crop": crop_entry(settings),
        "video": settings.video_params(),
    }
    if stored and all(stored.get(k) == v for k, v in entries.items()):
        return
    clip = entries["clip"]  # every CLIP model with a collection here, the new one last
    clips = [c for c in current.clips if c.get("collection") != clip["collection"]]
    if current.clip and current.clip.get("collection") != clip["collection"] and current.clip not in clips:
        clips.append(current.clip)
    catalog.set_library({**entries, "clips": {"models": [*clips, clip]}})


def recalled(rec: Recorded) -> dict:
    """Settings fields that reproduce the record."""
    out: dict = {}
    if rec.sam:
        out["sam"] = rec.sam["source"]
    if rec.clip:
        out["clip"] = rec.clip["source"]
        out["clip_arch"] = rec.clip.get("arch", "ViT-B-32")
    out.update({k: v for k, v in rec.amg.items() if k in AMG_FIELDS})
    if rec.amg and "prompts" not in rec.amg:
        out["prompts"] = "grid"  # indexed before prompt selection existed: every grid prompt
    if rec.amg and "mask_side" not in rec.amg:
        out["mask_side"] = 0  # indexed before the working resolution existed: masks at full size
    if rec.amg and "sam_precision" not in rec.amg:
        out["sam_precision"] = "fp32"  # indexed before the setting existed
    out.update({CROP_FIELDS[k]: v for k, v in rec.crop.items() if k in CROP_FIELDS})
    if rec.crop:
        out.update({CROP_FIELDS[k]: v for k, v in CROP_ABSENT.items() if k not in rec.crop})
    out.update({VIDEO_FIELDS[k]: v for k, v in rec.video.items() if k in VIDEO_FIELDS})
    if rec.video and "tracking" not in rec.video:
        out["video_tracking"] = "link"  # indexed before propagation: every frame's masks, linked
    return out


def describe(rec: Recorded) -> str:
    parts = []
    if rec.sam:
        parts.append(f"{'SAM 2' if rec.sam.get('family') == 'sam2' else 'SAM'} {rec.sam['name']}")
    if rec.clip:
        parts.append(f"CLIP {rec.clip['name']}")
    return " and ".join(parts) or "nothing yet"


def resolve(
    settings: Settings, catalog, purpose: Purpose, *, reindex: bool = False, collections: list[str] | None = None
) -> Settings:
    """``settings`` with every model setting the user did not give explicitly taken from the
    library's record, after checking the explicit ones against it (see the module docstring).

    ``collections``: the vector collections that exist (search/serve accept an earlier CLIP model
    whose collection is still there)."""
    rec = read(catalog)
    if rec.empty:
        return settings
    explicit = settings.model_fields_set
    keep = {k: v for k, v in recalled(rec).items() if k not in explicit}
    if (
        purpose == "index"
        and "sam" in explicit
        and rec.sam
        and sam_entry(settings)["fingerprint"] != rec.sam.get("fingerprint")
    ):
        # the recorded generator settings were resolved for the recorded SAM (a first run that
        # failed, or a --reindex with another model): the new SAM gets its own, unless given
        keep = {k: v for k, v in keep.items() if k not in AMG_FIELDS}
    resolved = settings.model_copy(update=keep)
    if keep:
        import logging

        logging.getLogger("segsearch.record").info(
            "from the library's record (given: %s): %s",
            ", ".join(sorted(explicit & {"sam", "clip", *AMG_FIELDS, *CROP_FIELDS.values()})) or "nothing",
            ", ".join(f"{k}={v}" for k, v in sorted(keep.items())),
            extra={"fields": {"event": "settings", "purpose": purpose, "recalled": keep}},
        )
    if purpose == "index" and not catalog.has_indexed():
        # nothing indexed yet (a first run was stopped before any image was written): the record
        # is not binding, so flags may still change it, but without flags the run goes on with it
        return resolved
    if purpose == "info":
        return resolved

    if purpose in ("search", "serve") and "clip" in explicit:
        entry = clip_entry(resolved)
        if (
            entry["collection"] != rec.clip.get("collection")
            and collections is not None
            and entry["collection"] not in collections
        ):
            have = [c["name"] for c in rec.clips if c["collection"] in collections] or [rec.clip["name"]]
            raise ConfigError(
                f"this library has no vectors for CLIP {entry['name']}: it holds vectors of "
                f"{', '.join(have)}. Search with one of those (or no --clip), or index with "
                f"`segsearch index PATHS --clip {settings.clip} --reindex`."
            )
    if purpose in ("index", "doctor"):
        changed = []
        if "sam" in explicit and sam_entry(resolved)["fingerprint"] != rec.sam.get("fingerprint"):
            changed.append(f"SAM {resolved.sam} (recorded: {rec.sam.get('name')})")
        if "clip" in explicit and clip_entry(resolved)["fingerprint"] != rec.clip.get("fingerprint"):
            changed.append(f"CLIP {resolved.clip} (recorded: {rec.clip.get('name')})")
        params = amg_params(resolved)
        for k in AMG_FIELDS:
            if k in explicit and rec.amg and params[k] != rec.amg.get(k, AMG_ABSENT.get(k)):
                changed.append(f"{k} {params[k]} (recorded: {rec.amg.get(k)})")
        for key, name in CROP_FIELDS.items():
            was = rec.crop.get(key, CROP_ABSENT.get(key))
            if name in explicit and rec.crop and getattr(resolved, name) != was:
                changed.append(f"{name} {getattr(resolved, name)} (recorded: {was})")
        if changed and not (purpose == "index" and reindex):
            how = (
                "pass --reindex to re-index with them (the record is replaced), or drop those flags"
                if purpose == "index"
                else "doctor checks the library against its recorded models; drop those flags, or switch "
                "models with `segsearch index PATHS --reindex`"
            )
            raise ConfigError(f"this library was indexed with {describe(rec)}; asked for {'; '.join(changed)}: {how}.")
    return resolved


def _on_disk(st) -> int:
    """Bytes a file takes on disk, as ``du`` counts them: its allocated blocks. The vector store's
    memory-mapped files are sparse (a 64 MB segment file may hold 100 KB), so their length would
    overstate the library's size by two orders of magnitude. (No block count, e.g. Windows: the
    length.)"""
    blocks = getattr(st, "st_blocks", None)
    return int(blocks) * 512 if blocks is not None else int(st.st_size)


def _dir_size(path: Path) -> int:
    import os

    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += _on_disk(os.lstat(os.path.join(root, f)))
            except OSError:
                pass
    return total


def last_run(catalog) -> dict | None:
    """The last index run, as ``info``, ``GET /v1/info`` and ``GET /v1/stats`` show it."""
    run = catalog.last_run()
    if run is None:
        return None
    return {
        "id": run.id,
        "status": run.status,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "indexed": run.indexed,
        "skipped": run.skipped,
        "failed": run.failed,
        "segments": run.segments,
    }


def info(settings: Settings, catalog, vectors) -> dict:
    """What ``segsearch info`` and ``GET /v1/info`` show: models, counts, last run, size on disk."""
    rec = read(catalog)
    collection = rec.clip.get("collection")
    last = last_run(catalog)
    data = Path(settings.data)
    sizes = {"vectors": _dir_size(settings.vectors_path) if settings.vector_backend == "embedded" else 0}
    db = data / "segsearch.db"
    sizes["sql"] = (
        sum(_on_disk(p.stat()) for p in data.glob("segsearch.db*"))
        if settings.database_url is None and db.exists()
        else 0
    )
    sizes["total"] = _dir_size(data) if data.is_dir() else 0
    return {
        "data": str(data.resolve()),
        "library": rec.to_dict(),
        "counts": catalog.counts(),
        "vectors": vectors.count(collection) if collection else 0,
        "collection": collection,
        "last_run": last,
        "size_bytes": sizes,
    }
