"""Long-lived objects shared by every request: the library (stores + models, ``segsearch.Library``),
one CLIP instance, one SAM prompt segmenter, the work slots, the render cache and the index jobs."""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache

import numpy as np

from segsearch import record
from segsearch.errors import SegsearchError
from segsearch.library import Library
from segsearch.models.sam import PromptSegmenter
from segsearch.roots import Roots
from segsearch.runtime import Models, open_stores
from segsearch.search import Searcher
from segsearch.settings import Settings

from segsearch.api.guard import ByteLRU, WorkSlots

log = logging.getLogger("segsearch.api")
# Seconds between background tries of a model load that failed (weights not downloaded yet, the hub
# unreachable): a request never retries it itself, it answers 503 at once. Doubling up to 5 minutes,
# so placing the weights or the network coming back is picked up without a restart.
LOAD_RETRY_S = (15, 30, 60, 120, 300)


class ModelsNotReady(SegsearchError):
    """CLIP is not loaded (yet): search answers 503 with Retry-After instead of waiting on a load."""


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
        self.load_attempts = 0
        self.next_load_at: float | None = None  # time.time() of the next background try, when one failed
        self._tried = threading.Event()  # the first load finished, loaded or failed
        self._stop_loading = threading.Event()
        self._loader: threading.Thread | None = None
        self._examples: tuple[int, list[str]] | None = None  # (vectors then, queries)
        self._examples_lock = threading.Lock()
        from segsearch.api.jobs import Jobs

        self.jobs = Jobs(self)

    def add_roots(self, folders) -> None:
        """``--watch`` folders are roots too."""
        self.roots = Roots.of([*self.roots.dirs, *folders])

    def load(self) -> None:
        """Load CLIP (so the first query is fast). A failure is kept in ``load_error`` (``/readyz``,
        503 bodies) and raised."""
        self.load_attempts += 1
        try:
            with self._load_lock:
                self.models.embedder  # noqa: B018
        except Exception as exc:  # noqa: BLE001
            self.load_error = f"CLIP model {self.clip_spec.name} is unavailable: {exc}"
            raise
        finally:
            self._tried.set()
        self.load_error = None
        self.next_load_at = None
        self.ready = True

    def start_loading(self) -> None:
        """Load in the background, so the server answers (``/healthz``, the page) from its first
        second; a failed load is retried with backoff (``LOAD_RETRY_S``), never per request."""
        if self.models.embedder_loaded:  # given (tests, the Python API): ready at once
            self.load()
        elif self._loader is None:
            self._loader = threading.Thread(target=self._load_until_loaded, name="segsearch-load", daemon=True)
            self._loader.start()

    def _load_until_loaded(self) -> None:
        while not self._stop_loading.is_set():
            try:
                self.load()
                log.info("models loaded: CLIP %s", self.clip_spec.name)
                return
            except SegsearchError:  # weights missing offline and the like: said, not a traceback
                pass
            except Exception:  # noqa: BLE001 - stay up and report not-ready instead of crashing
                log.exception("model loading failed")
            wait = LOAD_RETRY_S[min(self.load_attempts, len(LOAD_RETRY_S)) - 1]
            self.next_load_at = time.time() + wait
            log.warning("not ready: %s (/readyz says so); trying again in %d s", self.load_error, wait)
            self._stop_loading.wait(wait)

    @property
    def embedder(self):
        """CLIP for a request: a first load still running (a large checkpoint being read) is waited
        for within the request's time; one that failed answers at once (``ModelsNotReady``)."""
        return self.wait_for_embedder(self.settings.request_timeout_s)

    def wait_for_embedder(self, timeout: float | None):
        """CLIP, waiting up to ``timeout`` s (None: until it ends) for the first load (index jobs
        wait it out: a first download can take minutes)."""
        if self.ready or self._loader is None:  # loaded, or no background loading (the Python API, tests)
            with self._load_lock:
                return self.models.embedder
        self._tried.wait(timeout)
        if not self.ready:
            wait = None if self.next_load_at is None else max(0, round(self.next_load_at - time.time()))
            again = "" if wait is None else f"; the next try is in {wait} s"
            raise ModelsNotReady((self.load_error or "the models are still loading") + again)
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

    def examples(self) -> list[str]:
        """``segsearch.examples`` for this library, kept until the number of vectors changes."""
        from segsearch.examples import VOCABULARY, example_queries
        from segsearch.scene import background
        from segsearch.search import prompt_for

        with self._examples_lock:  # many pages opening at once: computed once, the others wait for it
            n = self.vectors.count(self.collection)
            if self._examples is not None and self._examples[0] == n:
                return self._examples[1]
            sample = background(self.vectors, self.collection)
            if sample.size == 0:
                return []
            embedder = self.embedder
            with self.model_lock:
                words = embedder.embed_texts([prompt_for(w) for w in VOCABULARY])
            got = example_queries(sample, words)
            self._examples = (n, got)
            return got

    def text_vector(self, text: str) -> np.ndarray:
        return _text_vector_cached(self, " ".join(text.split()))

    def image_vector(self, pil_image) -> np.ndarray:
        with self.model_lock:
            return self.searcher.image_vector(pil_image)

    def stop_loading(self) -> None:
        self._stop_loading.set()

    def close(self) -> None:
        self.stop_loading()
        self.jobs.stop()
        self.library.close()


@lru_cache(maxsize=4096)
def _text_vector_cached(services: Services, text: str) -> np.ndarray:
    with services.model_lock:
        v = services.searcher.text_vector(text)
    v.setflags(write=False)
    return v
