"""All configuration in one pydantic-settings class.

Precedence: CLI flags (passed as init kwargs) > environment (``SEGSEARCH_*``) > defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


DEFAULT_DATA = Path("segsearch-data")
CONFIG_NAME = "segsearch.toml"  # in the data directory: that library's settings
# Environment variables with our prefix that are not settings (test harness switches).
NOT_SETTINGS = {"SEGSEARCH_REQUIRE_PG", "SEGSEARCH_TEST_PG_URL", "SEGSEARCH_TEST_SECONDS_PER_IMAGE"}


def user_config_file() -> Path:
    """``$XDG_CONFIG_HOME/segsearch/config.toml`` (``~/.config/segsearch/config.toml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "segsearch" / "config.toml"


def user_data_dir() -> Path:
    """Where the demo keeps its library: ``$XDG_DATA_HOME/segsearch`` (``~/.local/share/segsearch``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "segsearch"


def memory_gib() -> float:
    """This machine's physical memory in GiB (8 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 8.0


def _default_work_slots() -> int:
    """One heavy API job per core, and at most one per 3 GiB of memory (a 100 MP upload decodes to
    300 MB and its SAM/CLIP work costs several times that)."""
    return max(1, min(os.cpu_count() or 1, int(memory_gib() // 3)))


def _default_checkpoints() -> Path:
    # In a source checkout downloaded weights go next to the bundled ones (checkpoints/, ignored by
    # git); an installed package never writes into site-packages: it uses the user's cache.
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "checkpoints").is_dir():
        return REPO_ROOT / "checkpoints"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segsearch" / "checkpoints"


CropMode = Literal["masked", "box", "blur"]


class Settings(BaseSettings):
    """Precedence: init kwargs (CLI flags) > ``SEGSEARCH_*`` environment > ``<data>/segsearch.toml``
    > the user's ``config.toml`` > defaults. A value from any of the first four is *explicit*
    (``model_fields_set``), and only explicit model settings override a library's record."""

    model_config = SettingsConfigDict(env_prefix="SEGSEARCH_", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ):
        data = init_settings.init_kwargs.get("data") or os.environ.get("SEGSEARCH_DATA") or DEFAULT_DATA
        files = [Path(data).expanduser() / CONFIG_NAME, user_config_file()]
        tomls = [TomlConfigSettingsSource(settings_cls, toml_file=f) for f in files if f.is_file()]
        return (init_settings, env_settings, *tomls)

    # --- where things live -------------------------------------------------------------
    data: Path = Field(DEFAULT_DATA, description="Data directory (SQLite file, embedded vectors).")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data>/segsearch.db")
    vector_backend: Literal["embedded", "server"] = Field(
        "embedded",
        description="embedded (Qdrant Edge, in-process) or server (qdrant-client: a Qdrant server or cluster).",
    )
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL for the server backend (':memory:' or a path = client local mode)."
    )
    qdrant_api_key: str | None = Field(None, description="API key of the Qdrant server (server backend).")
    checkpoints: Path = Field(
        default_factory=_default_checkpoints,
        description="Where SAM weights are downloaded and looked up; Hub pins and hand-placed Hub files. "
        "checkpoints/ in a checkout, else ~/.cache/segsearch/checkpoints.",
    )

    # --- embedded vector index (HNSW) ----------------------------------------------------------
    hnsw_m: int = Field(16, ge=4, le=128, description="HNSW edges per node (new collections).")
    hnsw_ef_construct: int = Field(100, ge=8, le=1000, description="HNSW build beam (new collections).")
    hnsw_ef: int = Field(2048, ge=8, le=8192, description="HNSW search beam: higher = better recall, slower.")

    # --- Qdrant server backend: options of new collections, and how writes are sent ----------
    qdrant_shards: int = Field(1, ge=1, description="Shards of a new collection (spread over cluster nodes).")
    qdrant_replication_factor: int = Field(1, ge=1, description="Copies of each shard (cluster).")
    qdrant_write_consistency_factor: int = Field(1, ge=1, description="Replicas that must confirm a write.")
    qdrant_on_disk: bool = Field(False, description="Keep full-precision vectors on disk (memory-mapped).")
    qdrant_quantization: Literal["none", "int8"] = Field(
        "none", description="int8 scalar quantisation in RAM (4x smaller), searches rescored with the originals."
    )
    qdrant_oversampling: float = Field(2.0, ge=1.0, description="int8: candidates fetched per result before rescoring.")
    qdrant_upsert_batch: int = Field(256, ge=1, description="Points per upsert request (each waits until applied).")
    qdrant_retries: int = Field(
        5, ge=0, description="Retries of a request that failed transiently (exponential backoff)."
    )
    qdrant_backoff_s: float = Field(0.5, ge=0.0, description="First retry delay; doubles each retry.")
    qdrant_timeout_s: int = Field(60, ge=1, description="Per-request timeout against the server.")
    qdrant_prefer_grpc: bool = Field(False, description="Talk gRPC (port 6334) instead of REST.")

    # --- models ------------------------------------------------------------------------
    sam: str = Field("sam-vit-b", description="Registered SAM name or checkpoint path.")
    clip: str = Field("clip-vit-b-32", description="Registered CLIP name or checkpoint path.")
    clip_arch: str = Field("ViT-B-32", description="open_clip architecture for --clip PATH.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    offline: bool = Field(False, description="Never download weights.")

    # --- automatic mask generation (segment_anything.SamAutomaticMaskGenerator) --------------
    amg: Literal["fast", "reference"] = Field(
        "fast",
        description="Mask engine: fast (same masks, survivors-only post-processing) or reference "
        "(the official SamAutomaticMaskGenerator). Not part of the fingerprint: both give the same masks.",
    )
    # Unset (None) generator settings take the SAM model's own (a bundled shapes model's tuned ones),
    # else its family's generator defaults (SAM 1: 32 / 0.88 / 0.95 / 0; SAM 2: IoU 0.8).
    points_per_side: int | None = Field(None, ge=1, description="Unset: the model's (Meta's: 32).")
    points_per_batch: int = Field(64, ge=1, description="SAM prompts decoded together (memory, not masks).")
    pred_iou_thresh: float | None = Field(
        None, ge=0.0, le=1.0, description="Unset: the model's (its family's generator: SAM 1 0.88, SAM 2 0.8)."
    )
    stability_score_thresh: float | None = Field(None, ge=0.0, le=1.0, description="Unset: the model's (Meta's: 0.95).")
    box_nms_thresh: float = Field(0.7, ge=0.0, le=1.0, description="Box IoU above which the weaker mask is dropped.")
    crop_n_layers: int = Field(0, ge=0, description="SAM's extra passes on image crops (0: the whole image only).")
    min_mask_region_area: int | None = Field(None, ge=0, description="Unset: the model's (Meta's: 0, no clean-up).")
    prompts: Literal["grid", "adaptive"] = Field(
        "adaptive",
        description="Which grid prompts SAM decodes: adaptive (coarse to fine, skipping points a decoded "
        "neighbour already explains; indexer/prompts.py) or grid (every point, as SAM's generator). "
        "The reference engine always decodes the whole grid.",
    )
    sam_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="SAM's image encoder in fp32 or bf16 (bfloat16; the mask head's products too): on a "
        "CPU with AVX512-BF16 or AMX the encoder is 1.4-1.5x faster; held-out masks match fp32's with mean "
        "IoU 0.98-0.999 (bench/RESULTS.md). Part of the pipeline fingerprint.",
    )
    mask_side: int = Field(
        2048,
        ge=0,
        description="Masks of photos larger than this many pixels on the long side are made on a view "
        "of this size and carried to the photo's pixels (indexer/working.py): SAM sees 1024 px, so "
        "a 24 MP photo costs about what a 4 MP one does. 0: at every photo's own size.",
    )

    # --- crops ---------------------------------------------------------------------------
    crop_mode: CropMode = Field(
        "masked", description="Outside the mask in a CLIP crop: masked (filled), box (kept), blur."
    )
    crop_padding: float = Field(0.1, ge=0.0, le=2.0, description="Context around the box, fraction of its side.")
    min_segment_area: int = Field(64, ge=0, description="Masks smaller than this many pixels are skipped.")
    clip_precision: Literal["fp32", "int8", "bf16"] = Field(
        "fp32",
        description="CLIP's image tower: fp32; int8 on a CPU (dynamic quantisation of its linear layers: "
        "1.5x faster, vectors within cosine 0.999 of fp32); bf16 (bfloat16 weights: on a CPU with "
        "AVX512-BF16 or AMX 2.3x faster, within cosine 0.9999). Part of the pipeline fingerprint.",
    )

    # --- indexing --------------------------------------------------------------------------
    clip_batch_size: int = Field(32, ge=1, description="Crops embedded by CLIP together.")
    read_workers: int = Field(2, ge=1, description="Threads reading, hashing and decoding files ahead of SAM.")
    prefetch: int = Field(4, ge=1, description="Files read ahead of the model stage (bounds memory).")
    write_group_images: int = Field(8, ge=1, description="Images whose crops are embedded and written together.")
    write_group_crops: int = Field(256, ge=1, description="...or fewer images once they hold this many crops.")
    max_image_pixels: int = Field(100_000_000, ge=1, description="Decompression-bomb guard.")
    max_image_bytes: int = Field(
        256 << 20,
        ge=1,
        description="Photo files larger than this fail unread (checked from their size: a photo is read whole "
        "to be hashed and decoded; videos are streamed and capped by duration instead).",
    )
    sam_processes: int = Field(
        0,
        ge=0,
        description="On a CPU, runs of 8+ files hand SAM to this many worker processes (one single-threaded "
        "SAM each, ~0.6 GB apiece); 0 or 1: SAM in the indexing process, on all its threads (default).",
    )

    # --- video ---------------------------------------------------------------------------
    video_fps: float = Field(2.0, gt=0, le=30, description="Frames per second sampled from videos (SAM runs on each).")
    min_track_seconds: float = Field(1.0, ge=0, description="Object tracks shorter than this are dropped (flickers).")
    video_keyframe_seconds: float = Field(
        2.0, gt=0, description="A whole-frame vector every this many seconds, so a moment can be found."
    )
    video_tracking: Literal["link", "propagate"] = Field(
        "propagate",
        description="propagate: each track's mask prompts SAM on the next sampled frame, new objects are looked "
        "for where the picture changed, automatic masks run on the first frame, cuts and every "
        "video_refresh_seconds; link: automatic masks on every sampled frame, linked afterwards (the way before; "
        "about 4x slower).",
    )
    # 20 s: on 6 validation clips of 60 s (bench/quality.py --video --split validation --video-seconds 60
    # --video-refresh-seconds 10,20,30) 10 and 20 s gave the same tracks (recall 0.905, precision@5 0.966,
    # temporal IoU 0.854 / 0.855), 30 s split more of them; each refresh is a full automatic-mask frame.
    video_refresh_seconds: float = Field(
        20.0,
        gt=0,
        description="With propagation, automatic masks at least this often (new objects that changed "
        "nothing else are found by then).",
    )
    track_vector: Literal["mean", "best"] = Field(
        "mean", description="A track's vector: the mean of its crops' embeddings, or its best frame's."
    )
    max_video_seconds: float = Field(
        3600.0, gt=0, description="Longer videos fail with a reason (checked from the header, and while decoding)."
    )
    engine: Literal["local", "ray"] = Field(
        "local", description="local: this process (threads); ray: Ray Data actor pools (many GPUs/machines)."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join (e.g. ray://head:10001); none = start a local Ray instance."
    )
    ray_sam_actors: int | None = Field(None, ge=1, description="SAM actors (default: one per GPU, else 1).")
    ray_clip_actors: int = Field(1, ge=1, description="CLIP actors.")
    ray_sam_batch: int = Field(4, ge=1, description="Images per SAM actor call.")
    ray_clip_batch: int = Field(16, ge=1, description="Images (all their crops) per CLIP actor call.")
    ray_cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per actor (CPU-only actors).")
    claim_lease_s: float = Field(
        300.0,
        gt=0,
        description="Several indexers on one database: an image claimed by an indexer that stops "
        "renewing its claim (crashed) is taken over after this many seconds.",
    )
    worker_id: str | None = Field(None, description="Name of this indexer in claims (default host:pid:random).")

    # --- query service ---------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address segsearch serve listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port segsearch serve listens on.")
    api_key: str | None = Field(
        None,
        description="The read key: when set, searches, records, renders, pages' API calls and /metrics require it "
        "(or the admin key).",
    )
    admin_key: str | None = Field(
        None,
        description="The admin key: index and repair jobs, concept writes, info and doctor require it. With only "
        "the read key set, those routes are closed over HTTP (a read-only server); with neither, a loopback server "
        "takes every request from its allowed hosts.",
    )
    roots: list[Path] = Field(
        default_factory=list,
        description="Library roots (serve --root, repeatable; --watch folders are roots too): the only folders an "
        "index job over HTTP may name (paths relative to a root, or absolute under one).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values the server answers (DNS-rebinding guard). Empty: loopback names and the "
        "address it binds; '*': any.",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS, e.g. '[\"https://example.org\"]' (none: no CORS)."
    )
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest upload (Content-Length, and while a chunked body streams)."
    )
    max_upload_pixels: int = Field(
        50_000_000,
        ge=1,
        description="Largest image an API request may decode (checked from its header): a "
        "/v1/segment call costs ~20 bytes per pixel, so 50 MP is ~1 GB of work.",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="API requests running longer get 503 + Retry-After.")
    max_concurrent_work: int = Field(
        default_factory=lambda: _default_work_slots(),
        ge=1,
        description="Image decodes, renders and model calls of the API running at once (default: by memory and cores).",
    )
    max_queued_work: int = Field(16, ge=0, description="Requests that may wait for a work slot; more get 503.")
    max_queued_jobs: int = Field(100, ge=1, description="Index/repair jobs that may wait; more are answered 429.")
    max_job_paths: int = Field(1000, ge=1, description="Paths (files, folders, globs) one index job may name.")
    max_job_files: int = Field(
        200_000, ge=1, description="Files one server index job may discover; a job that finds more fails, saying so."
    )
    discover_timeout_s: float = Field(
        60.0, gt=0, description="A server index job's folder and glob walk fails past this many seconds."
    )
    job_retention_days: float = Field(30.0, gt=0, description="Finished job records are deleted after this long.")
    max_concepts: int = Field(1000, ge=1, description="Concepts a library may hold.")
    render_cache_bytes: int = Field(64 << 20, ge=0, description="Rendered crops/masks/overlays kept, in bytes.")
    index_yield_s: float = Field(
        0.5,
        ge=0,
        le=10,
        description="A server's index job waits up to this long before each image and CLIP "
        "batch while searches are in flight (0: never yields).",
    )

    @field_validator("data", "checkpoints", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @property
    def sql_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data / 'segsearch.db').resolve()}"

    @property
    def vectors_path(self) -> Path:
        return self.data / "vectors"

    def given_amg_params(self) -> dict:
        """The mask generator's parameters as set (None: unset, the SAM model's default applies;
        ``segsearch.models.amg_params`` resolves them)."""
        return {
            "points_per_side": self.points_per_side,
            "points_per_batch": self.points_per_batch,
            "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_score_thresh,
            "box_nms_thresh": self.box_nms_thresh,
            "crop_n_layers": self.crop_n_layers,
            "min_mask_region_area": self.min_mask_region_area,
            "prompts": self.prompts,
            "mask_side": self.mask_side,
            "sam_precision": self.sam_precision,
        }

    def video_params(self) -> dict:
        """What changes a video's tracks (part of a video's fingerprint, not a photo's)."""
        return {
            "fps": self.video_fps,
            "min_track_s": self.min_track_seconds,
            "keyframe_s": self.video_keyframe_seconds,
            "vector": self.track_vector,
            # linking leaves these out: videos indexed before propagation keep their fingerprints
            **(
                {"tracking": "propagate", "refresh_s": self.video_refresh_seconds}
                if self.video_tracking == "propagate"
                else {}
            ),
        }

    def crop_params(self) -> dict:
        """What changes a crop's vector (part of the pipeline fingerprint). ``precision`` only when not
        fp32, so libraries indexed before the setting keep their fingerprints."""
        params = {"mode": self.crop_mode, "padding": self.crop_padding, "min_area": self.min_segment_area}
        if self.clip_precision != "fp32":
            params["precision"] = self.clip_precision
        return params

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def unknown_env_vars(environ=None) -> list[str]:
    """``SEGSEARCH_*`` variables that name no setting (a typo would otherwise be ignored silently),
    each with the closest setting when there is one."""
    import difflib

    environ = os.environ if environ is None else environ
    known = {f"SEGSEARCH_{name.upper()}" for name in Settings.model_fields}
    out = []
    for key in sorted(environ):
        if key.upper().startswith("SEGSEARCH_") and key.upper() not in known | NOT_SETTINGS:
            close = difflib.get_close_matches(key.upper(), sorted(known), n=1)
            out.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return out
