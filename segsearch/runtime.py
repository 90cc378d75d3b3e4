"""The one place that turns settings into live objects: the stores (SQL catalog + vector index)
and the models (SAM, CLIP). The library API, the CLI, the server, doctor, the evaluation harness,
the benchmarks and the Ray engine all get their models and stores here, so every caller loads
them with the same options (device, offline mode, CLIP batch size, locking order).

Which models a library uses is decided before this, by ``segsearch.record.resolve`` (the
library remembers its models); this module only builds what the resolved settings name.
"""

from __future__ import annotations

from typing import NamedTuple

from segsearch.identity import collection_name, pipeline_fingerprint, video_fingerprint
from segsearch.models import amg_params
from segsearch.settings import Settings
from segsearch.store.sql import Catalog
from segsearch.store.vectors import VectorIndex, open_vector_index
from segsearch.video import is_video


class Stores(NamedTuple):
    """The SQL catalog and the vector index of one data directory (or of the configured servers);
    ``catalog, vectors = open_stores(settings)`` unpacks them."""

    catalog: Catalog
    vectors: VectorIndex

    def close(self) -> None:
        try:
            self.vectors.close()
        finally:
            self.catalog.close()

    def __enter__(self) -> Stores:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_stores(settings: Settings) -> Stores:
    """Open both stores. The vector index first: the embedded store's lock stops a second process
    before it touches (or migrates) the SQL database. A data directory that cannot be one (a file
    there, no permission) is a ConfigError that says so (exit code 2), not a traceback."""
    check_data_dir(settings.data)
    vectors = open_vector_index(settings)
    try:
        return Stores(Catalog.open(settings.sql_url), vectors)
    except BaseException:
        vectors.close()
        raise


def check_data_dir(data) -> None:
    import os
    from pathlib import Path

    from segsearch.errors import ConfigError

    data = Path(data)
    hint = "choose another with --data or SEGSEARCH_DATA"
    for p in (data, *data.parents):  # the first part of the path that exists must be a directory
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == data else f"is under {p}, which is a file"
                raise ConfigError(f"data directory {data} {what}, not a directory; {hint}")
            if p != data and not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"data directory {data} cannot be created: {p} is not writable; {hint}")
            return


class _QueryEncoder:
    """``Models.query_encoder``."""

    def __init__(self, models: Models):
        self.models = models
        self._tower = False  # not looked for yet; then the TextTower, or None

    def embed_texts(self, texts):
        m = self.models
        if not m.embedder_loaded and self._tower is False:
            from segsearch.models.text_tower import TextTower

            self._tower = TextTower.open(m.settings.data, m.clip_spec.fingerprint)
        if not m.embedder_loaded and self._tower is not None:
            return self._tower.embed_texts(texts)
        return m.embedder.embed_texts(texts)

    def embed_images(self, images):
        return self.models.embedder.embed_images(images)


def load_clip(settings: Settings, spec=None):
    """The CLIP embedder that ``settings`` name (weights verified, downloaded unless offline)."""
    from segsearch.models import get_clip_spec
    from segsearch.models.clip import ClipEmbedder

    spec = spec or get_clip_spec(settings.clip, settings.clip_arch)
    embedder = ClipEmbedder.from_spec(
        spec,
        settings.checkpoints,
        device=settings.resolved_device(),
        offline=settings.offline,
        batch_size=settings.clip_batch_size,
        precision=settings.clip_precision,
    )
    from segsearch.models.text_tower import export

    export(embedder, settings.data)  # once per model: later text queries need no torch (text_tower.py)
    return embedder


def load_sam(settings: Settings, spec=None):
    """The SAM model (``segment_anything``'s ``Sam``) that ``settings`` name, on its device, in eval mode."""
    from segsearch.models import get_sam_spec
    from segsearch.models.sam import load_sam as _load
    from segsearch.models.sam import set_precision

    spec = spec or get_sam_spec(settings.sam)
    sam = _load(spec, settings.checkpoints, device=settings.resolved_device(), offline=settings.offline)
    set_precision(sam, settings.sam_precision)
    return sam


class Models:
    """SAM and CLIP for one set of settings, each loaded on first use: a run with nothing new to
    index, or a search, never loads SAM. Fingerprints come from the specs alone.

    ``mask_generator`` is the automatic mask generator wrapping ``sam``; the indexer builds it on
    first use (``segsearch.indexer.amg.mask_generator_for``) unless one is given (tests give a
    fast one). ``guard``, when given, is called before each heavy model call of an index run (a
    server's index job yields to queries there, and stops there when cancelled)."""

    def __init__(
        self,
        settings: Settings,
        *,
        sam_spec=None,
        clip_spec=None,
        sam=None,
        embedder=None,
        mask_generator=None,
        engine: str | None = None,
        guard=None,
    ):
        from segsearch.models import get_clip_spec, get_sam_spec

        self.settings = settings
        self.sam_spec = sam_spec or get_sam_spec(settings.sam)
        self.clip_spec = clip_spec or (embedder.spec if embedder else get_clip_spec(settings.clip, settings.clip_arch))
        self.engine = engine or settings.amg
        self.mask_generator = mask_generator
        # a given generator runs in this process only; one built from the settings can also be
        # built in SAM worker processes (segsearch.indexer.sam_procs)
        self.given_mask_generator = mask_generator is not None
        self.guard = guard
        self._sam = sam
        self._embedder = embedder
        self._query_encoder = None

    @property
    def fingerprint(self) -> str:
        """What a segment depends on: both models and the mask/crop settings."""
        return pipeline_fingerprint(
            self.sam_spec.fingerprint,
            self.clip_spec.fingerprint,
            amg_params(self.settings),
            self.settings.crop_params(),
        )

    @property
    def video_fingerprint(self) -> str:
        """A video's: the pipeline's plus the video sampling (changing --video-fps redoes videos only)."""
        return video_fingerprint(self.fingerprint, self.settings.video_params())

    def fingerprint_for(self, path) -> str:
        return self.video_fingerprint if is_video(path) else self.fingerprint

    @property
    def collection(self) -> str:
        """The vector collection of this CLIP model (one per embedding space)."""
        return collection_name(self.clip_spec.fingerprint)

    @property
    def query_encoder(self):
        """What turns a query into a vector: CLIP once loaded; before that, text through the NumPy
        text tower exported into the data directory (no torch import: a cold CLI query), images and
        anything else through CLIP, loaded then."""
        if self._query_encoder is None:
            self._query_encoder = _QueryEncoder(self)
        return self._query_encoder

    @property
    def embedder_loaded(self) -> bool:
        """CLIP is in memory (given, or loaded already): asking for it costs nothing."""
        return self._embedder is not None

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = load_clip(self.settings, self.clip_spec)
        return self._embedder

    @property
    def sam(self):
        if self._sam is None:
            self._sam = load_sam(self.settings, self.sam_spec)
        return self._sam
