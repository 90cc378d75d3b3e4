"""Vector storage behind one small interface, with two backends:

* ``EdgeVectorIndex``   – Qdrant Edge (``qdrant-edge-py``), in-process, one shard folder per
  collection under ``<data>/vectors``. The embedded default.
* ``ServerVectorIndex`` – ``qdrant-client`` against a Qdrant server/cluster (or the client's
  local mode, ``:memory:`` or a path, which has the same API and stands in for it in tests).

Point id = segment id (UUID). Every write returns only after it is durable (Edge: flush;
server: ``wait=True``). Payload carries what filters need: ``image_id``, ``kind``,
``area_frac``, ``bbox``, ``paths`` and ``dirs`` (every ancestor folder of every path, so a
path-prefix filter is an exact keyword match on both backends).
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from segsearch.errors import StorageError

PAYLOAD_INDEXES = {"image_id": "keyword", "kind": "keyword", "dirs": "keyword", "area_frac": "float"}


@dataclass
class VectorPoint:
    id: str
    vector: Sequence[float]
    payload: dict


@dataclass
class VectorHit:
    id: str
    score: float
    payload: dict = field(default_factory=dict)


@dataclass
class SearchFilter:
    image_ids: list[str] | None = None
    kind: str | None = None  # "object" | "image"
    path_prefix: str | None = None  # a folder: hits whose image lies under it
    min_area: float | None = None  # fraction of the image
    max_area: float | None = None

    def is_empty(self) -> bool:
        return not (self.image_ids or self.kind or self.path_prefix or self.min_area is not None
                    or self.max_area is not None)


def path_dirs(paths: Sequence[str]) -> list[str]:
    """All ancestor folders of the given paths (for exact-match prefix filtering)."""
    out: set[str] = set()
    for p in paths:
        for parent in PurePath(p).parents:
            out.add(str(parent))
    return sorted(out)


def normalize_prefix(prefix: str) -> str:
    p = str(PurePath(prefix))
    return p.rstrip("/") or "/"


class VectorIndex(ABC):
    """What the indexer and the query service need from a vector store."""

    @abstractmethod
    def ensure_collection(self, name: str, dim: int) -> None: ...

    @abstractmethod
    def collections(self) -> list[str]: ...

    @abstractmethod
    def upsert(self, name: str, points: Sequence[VectorPoint]) -> None: ...

    @abstractmethod
    def delete(self, name: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def delete_by_image(self, name: str, image_id: str) -> None: ...

    @abstractmethod
    def set_image_paths(self, name: str, image_id: str, paths: Sequence[str]) -> None: ...

    @abstractmethod
    def search(self, name: str, vector: Sequence[float], limit: int, flt: SearchFilter | None = None,
               offset: int = 0, score_threshold: float | None = None, exact: bool = False) -> list[VectorHit]:
        """Nearest points; ``exact`` bypasses the HNSW index (brute force, for recall checks)."""

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = True) -> dict[str, VectorPoint]: ...

    @abstractmethod
    def count(self, name: str, flt: SearchFilter | None = None) -> int: ...

    @abstractmethod
    def iter_ids(self, name: str) -> Iterator[str]: ...

    @abstractmethod
    def close(self) -> None: ...

    def has_collection(self, name: str) -> bool:
        return name in self.collections()

    def optimize(self) -> None:
        """Bring indexes up to date after a batch of writes (a server does this by itself)."""


def _lock_dir(root: Path):
    """Hold an exclusive lock on the embedded store for this handle's lifetime (released by the OS
    if the process dies), so a second indexer/server on the same data directory stops at once with a
    clear message instead of racing the first."""
    import fcntl
    import os

    f = open(root / ".lock", "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise StorageError(
            f"the embedded vector store {root} is in use by {holder} (one data directory serves one segsearch "
            "process at a time; wait for it, or use the server backend to share the data)") from None
    f.seek(0)
    f.truncate()
    f.write(f"segsearch pid {os.getpid()}")
    f.flush()
    return f


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX: the directory entry lives in the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _vec(v) -> list[float]:
    return np.asarray(v, dtype=np.float32).tolist()


# ------------------------------------------------------------------------------------------
# Embedded: Qdrant Edge
# ------------------------------------------------------------------------------------------
class EdgeVectorIndex(VectorIndex):
    def __init__(self, root: Path, *, hnsw_m: int = 16, hnsw_ef_construct: int = 100, hnsw_ef: int = 2048):
        self.hnsw_m, self.hnsw_ef_construct, self.hnsw_ef = hnsw_m, hnsw_ef_construct, hnsw_ef
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: dict = {}
        self._lock = threading.RLock()
        self._dir_lock = _lock_dir(self.root)

    def _shard(self, name: str, create_dim: int | None = None):
        import qdrant_edge as q

        with self._lock:
            if name in self._shards:
                return self._shards[name]
            path = self.root / name
            try:
                if path.is_dir() and any(path.iterdir()):
                    shard = q.EdgeShard.load(str(path))
                elif create_dim is not None:
                    shard = self._create_shard(q, path, create_dim)
                else:
                    raise StorageError(f"vector collection {name!r} does not exist in {self.root}")
            except StorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - the binding raises plain Exceptions
                if "WouldBlock" in str(exc):
                    raise StorageError(
                        f"the embedded vector store {path} is in use by another process (one data directory "
                        "serves one segsearch process at a time; use the server backend to share it)") from exc
                raise StorageError(f"cannot open vector shard {path}: {exc}") from exc
            self._shards[name] = shard
            return shard

    def _create_shard(self, q, path: Path, dim: int):
        """Create a shard atomically: build it (config, payload indexes) under a hidden temporary name,
        flush and close it, then rename it into place. A process killed half-way leaves only the hidden
        directory, which the next creation discards; a visible shard directory is always loadable."""
        tmp = path.with_name(f".{path.name}.creating")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)  # an empty leftover directory
        shard = q.EdgeShard.create(str(tmp), q.EdgeConfig(
            vectors=q.EdgeVectorParams(size=dim, distance=q.Distance.Cosine),
            hnsw_config=q.HnswIndexConfig(m=self.hnsw_m, ef_construct=self.hnsw_ef_construct,
                                          full_scan_threshold=10_000)))
        for key, kind in PAYLOAD_INDEXES.items():
            schema = q.PayloadSchemaType.Keyword if kind == "keyword" else q.PayloadSchemaType.Float
            shard.update(q.UpdateOperation.create_field_index(key, schema))
        shard.flush()
        shard.close()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return q.EdgeShard.load(str(path))

    def ensure_collection(self, name: str, dim: int) -> None:
        self._shard(name, create_dim=dim)

    def collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and any(p.iterdir()))

    def has_collection(self, name: str) -> bool:
        if name in self._shards:
            return True
        path = self.root / name
        return path.is_dir() and any(path.iterdir())

    def _apply(self, name: str, op) -> None:
        shard = self._shard(name)
        with self._lock:
            shard.update(op)
            shard.flush()

    def upsert(self, name: str, points: Sequence[VectorPoint]) -> None:
        import qdrant_edge as q

        if points:
            self._apply(name, q.UpdateOperation.upsert_points(
                [q.Point(uuid.UUID(p.id), _vec(p.vector), p.payload) for p in points]))

    def delete(self, name: str, ids: Sequence[str]) -> None:
        import qdrant_edge as q

        if ids and self.has_collection(name):
            self._apply(name, q.UpdateOperation.delete_points([uuid.UUID(i) for i in ids]))

    def delete_by_image(self, name: str, image_id: str) -> None:
        import qdrant_edge as q

        if self.has_collection(name):
            self._apply(name, q.UpdateOperation.delete_points_by_filter(
                self._filter(SearchFilter(image_ids=[image_id]))))

    def set_image_paths(self, name: str, image_id: str, paths: Sequence[str]) -> None:
        import qdrant_edge as q

        self._apply(name, q.UpdateOperation.set_payload_by_filter(
            self._filter(SearchFilter(image_ids=[image_id])), {"paths": list(paths), "dirs": path_dirs(paths)}))

    @staticmethod
    def _filter(flt: SearchFilter | None):
        import qdrant_edge as q

        if flt is None or flt.is_empty():
            return None
        must = []
        if flt.image_ids:
            must.append(q.FieldCondition("image_id", match=q.MatchAny(list(flt.image_ids))))
        if flt.kind:
            must.append(q.FieldCondition("kind", match=q.MatchValue(flt.kind)))
        if flt.path_prefix:
            must.append(q.FieldCondition("dirs", match=q.MatchValue(normalize_prefix(flt.path_prefix))))
        if flt.min_area is not None or flt.max_area is not None:
            must.append(q.FieldCondition("area_frac", range=q.RangeFloat(gte=flt.min_area, lte=flt.max_area)))
        return q.Filter(must=must)

    def search(self, name, vector, limit, flt=None, offset=0, score_threshold=None, exact=False):
        import qdrant_edge as q

        if not self.has_collection(name):
            return []
        shard = self._shard(name)
        res = shard.query(q.QueryRequest(limit=limit, offset=offset or None, query=q.Query.Nearest(_vec(vector)),
                                         filter=self._filter(flt), with_payload=True,
                                         score_threshold=score_threshold,
                                         params=q.SearchParams(exact=True) if exact else
                                         q.SearchParams(hnsw_ef=self.hnsw_ef)))
        return [VectorHit(str(p.id), float(p.score), dict(p.payload or {})) for p in res]

    def retrieve(self, name, ids, with_vectors=True):
        if not ids or not self.has_collection(name):
            return {}
        recs = self._shard(name).retrieve([uuid.UUID(i) for i in ids], True, with_vectors)
        return {str(r.id): VectorPoint(str(r.id), list(r.vector) if with_vectors and r.vector is not None else [],
                                       dict(r.payload or {})) for r in recs}

    def count(self, name, flt=None):
        import qdrant_edge as q

        if not self.has_collection(name):
            return 0
        return int(self._shard(name).count(q.CountRequest(exact=True, filter=self._filter(flt))))

    def iter_ids(self, name):
        import qdrant_edge as q

        if not self.has_collection(name):
            return
        shard = self._shard(name)
        offset = None
        while True:
            recs, offset = shard.scroll(q.ScrollRequest(offset=offset, limit=1024, with_payload=False,
                                                        with_vector=False))
            for r in recs:
                yield str(r.id)
            if offset is None:
                break

    def optimize(self) -> None:
        """Build the HNSW index (Edge builds it only when asked)."""
        with self._lock:
            for name in self.collections():
                self._shard(name).optimize()

    def close(self) -> None:
        with self._lock:
            if self._dir_lock is not None:
                self._dir_lock.close()  # releases the flock
                self._dir_lock = None
            for shard in self._shards.values():
                try:
                    shard.flush()
                    shard.close()
                except Exception:  # noqa: BLE001
                    pass
            self._shards.clear()


# ------------------------------------------------------------------------------------------
# Server: qdrant-client (a Qdrant server/cluster, or the client's local mode)
# ------------------------------------------------------------------------------------------
@dataclass
class ServerOptions:
    """How new collections are laid out on a Qdrant server/cluster and how requests are sent.
    Collection options apply when segsearch creates a collection; an existing one keeps its own."""

    shards: int = 1
    replication_factor: int = 1
    write_consistency_factor: int = 1
    on_disk: bool = False  # full-precision vectors memory-mapped from disk
    quantization: str = "none"  # "int8": scalar quantisation in RAM, rescored with the originals
    oversampling: float = 2.0
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    hnsw_ef: int = 512
    upsert_batch: int = 256
    retries: int = 5
    backoff_s: float = 0.5
    timeout_s: int = 60
    prefer_grpc: bool = False

    @classmethod
    def from_settings(cls, s) -> ServerOptions:
        return cls(shards=s.qdrant_shards, replication_factor=s.qdrant_replication_factor,
                   write_consistency_factor=s.qdrant_write_consistency_factor, on_disk=s.qdrant_on_disk,
                   quantization=s.qdrant_quantization, oversampling=s.qdrant_oversampling, hnsw_m=s.hnsw_m,
                   hnsw_ef_construct=s.hnsw_ef_construct, hnsw_ef=s.hnsw_ef, upsert_batch=s.qdrant_upsert_batch,
                   retries=s.qdrant_retries, backoff_s=s.qdrant_backoff_s, timeout_s=s.qdrant_timeout_s,
                   prefer_grpc=s.qdrant_prefer_grpc)


def _transient(exc: BaseException) -> bool:
    """Worth retrying: the server could not be reached, timed out, or said "busy, try again"."""
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, (httpx.TransportError, ResponseHandlingException, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in (408, 429, 500, 502, 503, 504)
    code = getattr(exc, "code", None)  # grpc.RpcError
    if callable(code):
        try:
            return code().name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")
        except Exception:  # noqa: BLE001
            return False
    return False


class ServerVectorIndex(VectorIndex):
    def __init__(self, url: str, api_key: str | None = None, options: ServerOptions | None = None):
        from qdrant_client import QdrantClient

        self.url = url
        self.opt = options or ServerOptions()
        self.local = not url.startswith(("http://", "https://"))
        self._known: set[str] = set()
        self.retried = 0  # transient failures absorbed (for tests and logs)
        try:
            if url == ":memory:":
                self.client = QdrantClient(location=":memory:")
            elif url.startswith(("http://", "https://")):
                self.client = QdrantClient(url=url, api_key=api_key or None, timeout=self.opt.timeout_s,
                                           prefer_grpc=self.opt.prefer_grpc, check_compatibility=False)
            else:  # a folder: the client's local on-disk mode
                self.client = QdrantClient(path=url)
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot reach the Qdrant server at {url}: {exc}") from exc

    def _call(self, what: str, fn, *args, **kwargs):
        """One request, retried with exponential backoff (and jitter) while it fails transiently.
        Every request segsearch sends is idempotent (upserts by id, deletes, payload sets), so a
        retry after a lost reply is safe."""
        import random
        import time

        delay = self.opt.backoff_s
        for attempt in range(self.opt.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below
                if not _transient(exc):
                    raise
                if attempt == self.opt.retries:
                    raise StorageError(f"Qdrant {what} at {self.url} failed {attempt + 1} times: {exc}") from exc
                self.retried += 1
                time.sleep(delay * (1 + 0.25 * random.random()))
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def ensure_collection(self, name, dim):
        from qdrant_client import models as m
        from qdrant_client.http.exceptions import UnexpectedResponse

        if self.has_collection(name):
            return
        o = self.opt
        quant = None
        if o.quantization == "int8":
            quant = m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(
                type=m.ScalarType.INT8, quantile=0.99, always_ram=True))
        try:
            self._call("create collection", self.client.create_collection, name,
                       vectors_config=m.VectorParams(size=dim, distance=m.Distance.COSINE, on_disk=o.on_disk or None),
                       shard_number=o.shards, replication_factor=o.replication_factor,
                       write_consistency_factor=o.write_consistency_factor,
                       hnsw_config=m.HnswConfigDiff(m=o.hnsw_m, ef_construct=o.hnsw_ef_construct),
                       quantization_config=quant)
        except (UnexpectedResponse, ValueError):
            # another indexer created it between our look and our request
            if not self.client.collection_exists(name):
                raise
        self._known.add(name)
        if self.local:
            return  # local mode has no payload indexes (and warns about them)
        for key, kind in PAYLOAD_INDEXES.items():  # the fields filters use (idempotent on the server)
            schema = m.PayloadSchemaType.KEYWORD if kind == "keyword" else m.PayloadSchemaType.FLOAT
            self._call("create payload index", self.client.create_payload_index, name, key, field_schema=schema,
                       wait=True)

    def _search_params(self, exact: bool):
        from qdrant_client import models as m

        if self.local:
            return None  # local mode is always exact
        if exact:
            return m.SearchParams(exact=True)
        quant = None
        if self.opt.quantization == "int8":
            quant = m.QuantizationSearchParams(rescore=True, oversampling=self.opt.oversampling)
        return m.SearchParams(hnsw_ef=self.opt.hnsw_ef, quantization=quant)

    def collections(self):
        return sorted(c.name for c in self._call("list collections", self.client.get_collections).collections)

    def has_collection(self, name):
        # collections are never dropped by segsearch: remember the ones seen, ask the server otherwise
        if name not in self._known and self._call("check collection", self.client.collection_exists, name):
            self._known.add(name)
        return name in self._known

    def upsert(self, name, points):
        """Batches of ``upsert_batch`` points, each acknowledged only once applied (``wait=True``)."""
        from qdrant_client import models as m

        for i in range(0, len(points), self.opt.upsert_batch):
            batch = [m.PointStruct(id=p.id, vector=_vec(p.vector), payload=p.payload)
                     for p in points[i : i + self.opt.upsert_batch]]
            self._call("upsert", self.client.upsert, name, batch, wait=True)

    def delete(self, name, ids):
        from qdrant_client import models as m

        if ids and self.has_collection(name):
            self._call("delete", self.client.delete, name, m.PointIdsList(points=list(ids)), wait=True)

    def delete_by_image(self, name, image_id):
        from qdrant_client import models as m

        if self.has_collection(name):
            self._call("delete", self.client.delete, name,
                       m.FilterSelector(filter=self._filter(SearchFilter(image_ids=[image_id]))), wait=True)

    def set_image_paths(self, name, image_id, paths):
        self._call("set payload", self.client.set_payload, name, {"paths": list(paths), "dirs": path_dirs(paths)},
                   points=self._filter(SearchFilter(image_ids=[image_id])), wait=True)

    @staticmethod
    def _filter(flt):
        from qdrant_client import models as m

        if flt is None or flt.is_empty():
            return None
        must = []
        if flt.image_ids:
            must.append(m.FieldCondition(key="image_id", match=m.MatchAny(any=list(flt.image_ids))))
        if flt.kind:
            must.append(m.FieldCondition(key="kind", match=m.MatchValue(value=flt.kind)))
        if flt.path_prefix:
            must.append(m.FieldCondition(key="dirs", match=m.MatchValue(value=normalize_prefix(flt.path_prefix))))
        if flt.min_area is not None or flt.max_area is not None:
            must.append(m.FieldCondition(key="area_frac", range=m.Range(gte=flt.min_area, lte=flt.max_area)))
        return m.Filter(must=must)

    def search(self, name, vector, limit, flt=None, offset=0, score_threshold=None, exact=False):
        if not self.has_collection(name):
            return []
        res = self._call("search", self.client.query_points, name, query=_vec(vector), limit=limit,
                         offset=offset or None, search_params=self._search_params(exact),
                         query_filter=self._filter(flt), with_payload=True, score_threshold=score_threshold)
        return [VectorHit(str(p.id), float(p.score), dict(p.payload or {})) for p in res.points]

    def retrieve(self, name, ids, with_vectors=True):
        if not ids or not self.has_collection(name):
            return {}
        recs = self._call("retrieve", self.client.retrieve, name, list(ids), with_payload=True,
                          with_vectors=with_vectors)
        return {str(r.id): VectorPoint(str(r.id), list(r.vector) if with_vectors and r.vector is not None else [],
                                       dict(r.payload or {})) for r in recs}

    def count(self, name, flt=None):
        if not self.has_collection(name):
            return 0
        return int(self._call("count", self.client.count, name, count_filter=self._filter(flt), exact=True).count)

    def iter_ids(self, name):
        if not self.has_collection(name):
            return
        offset = None
        while True:
            recs, offset = self._call("scroll", self.client.scroll, name, limit=1024, offset=offset,
                                      with_payload=False, with_vectors=False)
            for r in recs:
                yield str(r.id)
            if offset is None:
                break

    def close(self):
        self.client.close()


def open_vector_index(settings) -> VectorIndex:
    if settings.vector_backend == "server":
        if not settings.qdrant_url:
            from segsearch.errors import ConfigError

            raise ConfigError("vector_backend=server needs SEGSEARCH_QDRANT_URL (or --qdrant-url)")
        return ServerVectorIndex(settings.qdrant_url, settings.qdrant_api_key, ServerOptions.from_settings(settings))
    return EdgeVectorIndex(settings.vectors_path, hnsw_m=settings.hnsw_m, hnsw_ef_construct=settings.hnsw_ef_construct,
                           hnsw_ef=settings.hnsw_ef)
