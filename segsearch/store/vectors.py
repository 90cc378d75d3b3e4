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


def _vec(v) -> list[float]:
    return np.asarray(v, dtype=np.float32).tolist()


# ------------------------------------------------------------------------------------------
# Embedded: Qdrant Edge
# ------------------------------------------------------------------------------------------
class EdgeVectorIndex(VectorIndex):
    def __init__(self, root: Path, *, hnsw_m: int = 16, hnsw_ef_construct: int = 100, hnsw_ef: int = 512):
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
                    shard = q.EdgeShard.create(str(path), q.EdgeConfig(
                        vectors=q.EdgeVectorParams(size=create_dim, distance=q.Distance.Cosine),
                        hnsw_config=q.HnswIndexConfig(m=self.hnsw_m, ef_construct=self.hnsw_ef_construct,
                                                      full_scan_threshold=10_000)))
                    for key, kind in PAYLOAD_INDEXES.items():
                        schema = q.PayloadSchemaType.Keyword if kind == "keyword" else q.PayloadSchemaType.Float
                        shard.update(q.UpdateOperation.create_field_index(key, schema))
                    shard.flush()
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

    def ensure_collection(self, name: str, dim: int) -> None:
        self._shard(name, create_dim=dim)

    def collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.iterdir()))

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
class ServerVectorIndex(VectorIndex):
    def __init__(self, url: str, api_key: str | None = None):
        from qdrant_client import QdrantClient

        self.local = not url.startswith(("http://", "https://"))
        self._known: set[str] = set()
        try:
            if url == ":memory:":
                self.client = QdrantClient(location=":memory:")
            elif url.startswith(("http://", "https://")):
                self.client = QdrantClient(url=url, api_key=api_key)
            else:  # a folder: the client's local on-disk mode
                self.client = QdrantClient(path=url)
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot reach the Qdrant server at {url}: {exc}") from exc

    def ensure_collection(self, name, dim):
        from qdrant_client import models as m

        if self.has_collection(name):
            return
        self.client.create_collection(name, vectors_config=m.VectorParams(size=dim, distance=m.Distance.COSINE))
        self._known.add(name)
        if self.local:
            return  # local mode has no payload indexes (and warns about them)
        for key, kind in PAYLOAD_INDEXES.items():
            schema = m.PayloadSchemaType.KEYWORD if kind == "keyword" else m.PayloadSchemaType.FLOAT
            self.client.create_payload_index(name, key, field_schema=schema, wait=True)

    def collections(self):
        return sorted(c.name for c in self.client.get_collections().collections)

    def has_collection(self, name):
        # collections are never dropped by segsearch: remember the ones seen, ask the server otherwise
        if name not in self._known and self.client.collection_exists(name):
            self._known.add(name)
        return name in self._known

    def upsert(self, name, points):
        from qdrant_client import models as m

        if points:
            self.client.upsert(name, [m.PointStruct(id=p.id, vector=_vec(p.vector), payload=p.payload)
                                      for p in points], wait=True)

    def delete(self, name, ids):
        from qdrant_client import models as m

        if ids and self.has_collection(name):
            self.client.delete(name, m.PointIdsList(points=list(ids)), wait=True)

    def delete_by_image(self, name, image_id):
        from qdrant_client import models as m

        if self.has_collection(name):
            self.client.delete(name, m.FilterSelector(filter=self._filter(SearchFilter(image_ids=[image_id]))),
                               wait=True)

    def set_image_paths(self, name, image_id, paths):
        self.client.set_payload(name, {"paths": list(paths), "dirs": path_dirs(paths)},
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
        from qdrant_client import models as m

        if not self.has_collection(name):
            return []
        res = self.client.query_points(name, query=_vec(vector), limit=limit, offset=offset or None,
                                       search_params=m.SearchParams(exact=True) if exact and not self.local else None,
                                       query_filter=self._filter(flt), with_payload=True,
                                       score_threshold=score_threshold)
        return [VectorHit(str(p.id), float(p.score), dict(p.payload or {})) for p in res.points]

    def retrieve(self, name, ids, with_vectors=True):
        if not ids or not self.has_collection(name):
            return {}
        recs = self.client.retrieve(name, list(ids), with_payload=True, with_vectors=with_vectors)
        return {str(r.id): VectorPoint(str(r.id), list(r.vector) if with_vectors and r.vector is not None else [],
                                       dict(r.payload or {})) for r in recs}

    def count(self, name, flt=None):
        if not self.has_collection(name):
            return 0
        return int(self.client.count(name, count_filter=self._filter(flt), exact=True).count)

    def iter_ids(self, name):
        if not self.has_collection(name):
            return
        offset = None
        while True:
            recs, offset = self.client.scroll(name, limit=1024, offset=offset, with_payload=False,
                                              with_vectors=False)
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
        return ServerVectorIndex(settings.qdrant_url, settings.qdrant_api_key)
    return EdgeVectorIndex(settings.vectors_path, hnsw_m=settings.hnsw_m, hnsw_ef_construct=settings.hnsw_ef_construct,
                           hnsw_ef=settings.hnsw_ef)
