"""Long-lived objects shared by every request (stores, one CLIP instance, one SAM predictor),
and the FastAPI dependencies that hand them out."""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache

import numpy as np
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from segsearch.identity import collection_name
from segsearch.models import get_clip_spec, get_sam_spec
from segsearch.search import Searcher
from segsearch.settings import Settings
from segsearch.store.sql import Catalog
from segsearch.store.vectors import VectorIndex, open_vector_index

from segsearch.api.errors import ProblemError


class Services:
    """Opens the stores, then takes its models from the library's record (``segsearch.library``):
    a server started with no model flags serves what the data directory was indexed with."""

    def __init__(self, settings: Settings, *, embedder=None, sam=None):
        from segsearch import library

        self.vectors: VectorIndex = open_vector_index(settings)  # first: the lock stops a second process early
        try:
            self.catalog = Catalog.open(settings.sql_url)
            settings = library.resolve(settings, self.catalog, "serve", collections=self.vectors.collections())
        except BaseException:
            self.vectors.close()
            raise
        self.settings = settings
        self.clip_spec = embedder.spec if embedder is not None else get_clip_spec(settings.clip, settings.clip_arch)
        self.collection = collection_name(self.clip_spec.fingerprint)
        self._embedder = embedder
        self._sam = sam
        self._sam_spec = None
        self._load_lock = threading.Lock()
        self.model_lock = threading.Lock()  # one shared model instance; torch calls serialised
        self.embeddings = EmbeddingCache(capacity=16)
        from segsearch.api.guard import ByteLRU, WorkSlots

        self.work = WorkSlots(settings.max_concurrent_work, settings.max_queued_work, settings.request_timeout_s)
        self.renders = ByteLRU(settings.render_cache_bytes)
        self.ready = False
        self.load_error: str | None = None  # why the models are not loaded (readyz, 503 bodies)
        from segsearch.api.jobs import Jobs

        self.jobs = Jobs(self)

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
    def sam_spec(self):
        if self._sam_spec is None:
            self._sam_spec = get_sam_spec(self.settings.sam)
        return self._sam_spec

    @property
    def embedder(self):
        with self._load_lock:
            if self._embedder is None:
                from segsearch.models.clip import ClipEmbedder

                s = self.settings
                self._embedder = ClipEmbedder.from_spec(self.clip_spec, s.checkpoints, device=s.resolved_device(),
                                                        offline=s.offline)
            return self._embedder

    @property
    def sam(self):
        with self._load_lock:
            if self._sam is None:
                from segsearch.models.sam import load_sam

                s = self.settings
                self._sam = load_sam(self.sam_spec, s.checkpoints, device=s.resolved_device(),
                                     offline=s.offline)
            return self._sam

    @property
    def searcher(self) -> Searcher:
        return Searcher(self.catalog, self.vectors, self.embedder, self.collection)

    def text_vector(self, text: str) -> np.ndarray:
        return _text_vector_cached(self, " ".join(text.split()))

    def close(self) -> None:
        self.jobs.stop()
        self.vectors.close()
        self.catalog.close()


@lru_cache(maxsize=4096)
def _text_vector_cached(services: Services, text: str) -> np.ndarray:
    with services.model_lock:
        v = services.searcher.text_vector(text)
    v.setflags(write=False)
    return v


class EmbeddingCache:
    """SAM image embeddings by image content hash (LRU), so repeated prompts on one image only
    run the light prompt encoder + mask decoder."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._d: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str):
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: str, value: dict) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_settings(services: Services = Depends(get_services)) -> Settings:
    return services.settings


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(request: Request, key: str | None = Depends(_api_key_header)) -> None:
    from segsearch.api.guard import key_problem

    bad = key_problem(key, request.headers.get("authorization"), request.app.state.services.settings.api_key)
    if bad is not None:
        raise bad
