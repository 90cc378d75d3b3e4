"""Long-lived objects shared by every request: the library (stores + models, ``segsearch.Library``),
one CLIP instance, one SAM prompt segmenter, the work slots, the render cache and the index jobs."""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from segsearch import record
from segsearch.library import Library
from segsearch.models.sam import PromptSegmenter
from segsearch.roots import Roots
from segsearch.runtime import Models, open_stores
from segsearch.search import Searcher
from segsearch.settings import Settings

from segsearch.api.guard import ByteLRU, WorkSlots


class Services:
    """Opens the stores, then takes its models from the library's record (``segsearch.record``):
    a server started with no model flags serves what the data directory was indexed with."""

    def __init__(self, settings: Settings, *, embedder=None, sam=None):
        stores = open_stores(settings)  # first: the embedded store's lock stops a second process early
        try:
            settings = record.resolve(settings, stores.catalog, "serve", collections=stores.vectors.collections())
        except BaseException:
            stores.close()
            raise
        self.settings = settings
        self.models = Models(settings, embedder=embedder, sam=sam)
        self.library = Library(settings=settings, models=self.models, stores=stores)
        self.catalog, self.vectors = stores
        self.clip_spec, self.sam_spec = self.models.clip_spec, self.models.sam_spec
        self.collection = self.models.collection
        self._load_lock = threading.Lock()
        self.model_lock = threading.Lock()  # one shared model instance; torch calls serialised
        self._segmenter: PromptSegmenter | None = None
        self.work = WorkSlots(settings.max_concurrent_work, settings.max_queued_work, settings.request_timeout_s)
        # Video frames (seconds of decoding each) and scene queries (up to a second of CPU each) get
        # pools of their own, half the size: however many clients loop on them, crops, overlays and
        # plain searches keep their slots, and a core stays free for the event loop
        half, quarter = max(1, settings.max_concurrent_work // 2), settings.max_queued_work // 4
        self.video_work = WorkSlots(half, quarter, settings.request_timeout_s)
        self.scene_work = WorkSlots(half, quarter, settings.request_timeout_s)
        self.renders = ByteLRU(settings.render_cache_bytes)
        self.roots = Roots.of(settings.roots)  # where jobs posted over HTTP may index (segsearch.roots)
        self.ready = False
        self.load_error: str | None = None  # why the models are not loaded (readyz, 503 bodies)
        from segsearch.api.jobs import Jobs

        self.jobs = Jobs(self)

    def add_roots(self, folders) -> None:
        """``--watch`` folders are roots too."""
        self.roots = Roots.of([*self.roots.dirs, *folders])

    def load(self) -> None:
        """Load CLIP up front so the first query is fast; a failure is kept, not raised: the server
        stays up and says what is missing (``/readyz``, 503 on search)."""
        try:
            self.embedder  # noqa: B018
        except Exception as exc:  # noqa: BLE001
            self.load_error = f"CLIP model {self.clip_spec.name} is unavailable: {exc}"
            raise
        self.load_error = None
        self.ready = True

    @property
    def embedder(self):
        with self._load_lock:
            return self.models.embedder

    @property
    def sam(self):
        with self._load_lock:
            return self.models.sam

    @property
    def segmenter(self) -> PromptSegmenter:
        """Point/box prompts -> masks, image embeddings cached by content (``/v1/segment``)."""
        sam = self.sam
        with self._load_lock:
            if self._segmenter is None:
                self._segmenter = PromptSegmenter(sam, cache_images=16, lock=self.model_lock)
            return self._segmenter

    @property
    def searcher(self) -> Searcher:
        return Searcher(self.catalog, self.vectors, self.embedder, self.collection)

    @property
    def concepts(self):
        from segsearch.concepts import Concepts

        return Concepts(self.catalog, self.vectors, self.collection, self.text_vector)

    def text_vector(self, text: str) -> np.ndarray:
        return _text_vector_cached(self, " ".join(text.split()))

    def image_vector(self, pil_image) -> np.ndarray:
        with self.model_lock:
            return self.searcher.image_vector(pil_image)

    def close(self) -> None:
        self.jobs.stop()
        self.library.close()


@lru_cache(maxsize=4096)
def _text_vector_cached(services: Services, text: str) -> np.ndarray:
    with services.model_lock:
        v = services.searcher.text_vector(text)
    v.setflags(write=False)
    return v
