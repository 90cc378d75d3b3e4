"""The embedded vector store: Qdrant Edge (``qdrant-edge-py``) in this process, one shard folder per
collection under ``<data>/vectors``, held by one process at a time (a lock file)."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from segsearch.errors import StorageError
from segsearch.store.vectors import (
    PAYLOAD_INDEXES,
    SearchFilter,
    VectorHit,
    VectorIndex,
    VectorPoint,
    as_list,
    path_dirs,
    to_hits,
    to_points,
)


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
            "process at a time; wait for it, or use the server backend to share the data)"
        ) from None
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
                        "serves one segsearch process at a time; use the server backend to share it)"
                    ) from exc
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
        shard = q.EdgeShard.create(
            str(tmp),
            q.EdgeConfig(
                vectors=q.EdgeVectorParams(size=dim, distance=q.Distance.Cosine),
                hnsw_config=q.HnswIndexConfig(
                    m=self.hnsw_m, ef_construct=self.hnsw_ef_construct, full_scan_threshold=10_000
                ),
            ),
        )
        for key, kind in PAYLOAD_INDEXES.items():
            schema = getattr(q.PayloadSchemaType, kind.capitalize())
            shard.update(q.UpdateOperation.create_field_index(key, schema))
        shard.flush()
        shard.close()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return q.EdgeShard.load(str(path))

    def ensure_collection(self, name: str, dim: int) -> None:
        self._shard(name, create_dim=dim)

    def collections(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.iterdir())
        )

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
            self._apply(
                name,
                q.UpdateOperation.upsert_points(
                    [q.Point(uuid.UUID(p.id), as_list(p.vector), p.payload) for p in points]
                ),
            )

    def delete(self, name: str, ids: Sequence[str]) -> None:
        import qdrant_edge as q

        if ids and self.has_collection(name):
            self._apply(name, q.UpdateOperation.delete_points([uuid.UUID(i) for i in ids]))

    def delete_by_image(self, name: str, image_id: str) -> None:
        import qdrant_edge as q

        if self.has_collection(name):
            self._apply(
                name, q.UpdateOperation.delete_points_by_filter(self._filter(SearchFilter(image_ids=[image_id])))
            )

    def set_image_paths(self, name: str, image_id: str, paths: Sequence[str]) -> None:
        import qdrant_edge as q

        self._apply(
            name,
            q.UpdateOperation.set_payload_by_filter(
                self._filter(SearchFilter(image_ids=[image_id])), {"paths": list(paths), "dirs": path_dirs(paths)}
            ),
        )

    @staticmethod
    def _filter(flt: SearchFilter | None):
        import qdrant_edge as q

        if flt is None or flt.is_empty():
            return None
        spell = {
            "any": lambda k, v: q.FieldCondition(k, match=q.MatchAny(v)),
            "eq": lambda k, v: q.FieldCondition(k, match=q.MatchValue(v)),
            "range": lambda k, lo, hi: q.FieldCondition(k, range=q.RangeFloat(gte=lo, lte=hi)),
            "geo": lambda k, lat, lon, r: q.FieldCondition(k, geo_radius=q.GeoRadius(q.GeoPoint(lon=lon, lat=lat), r)),
        }
        return q.Filter(must=[spell[c[0]](*c[1:]) for c in flt.conditions()])

    def search(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        flt: SearchFilter | None = None,
        offset: int = 0,
        score_threshold: float | None = None,
        exact: bool = False,
        payload_keys: Sequence[str] | None = None,
        hnsw_ef: int | None = None,
    ) -> list[VectorHit]:
        import qdrant_edge as q

        if not self.has_collection(name):
            return []
        shard = self._shard(name)
        res = shard.query(
            q.QueryRequest(
                limit=limit,
                offset=offset or None,
                query=q.Query.Nearest(as_list(vector)),
                filter=self._filter(flt),
                with_payload=True if payload_keys is None else q.PayloadSelector.Include(list(payload_keys)),
                score_threshold=score_threshold,
                params=q.SearchParams(exact=True) if exact else q.SearchParams(hnsw_ef=hnsw_ef or self.hnsw_ef),
            )
        )
        return to_hits(res)

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = True) -> dict[str, VectorPoint]:
        if not ids or not self.has_collection(name):
            return {}
        return to_points(self._shard(name).retrieve([uuid.UUID(i) for i in ids], True, with_vectors), with_vectors)

    def sample(self, name: str, n: int, flt: SearchFilter | None = None) -> list[VectorPoint]:
        import qdrant_edge as q

        if n <= 0 or not self.has_collection(name):
            return []
        recs, _ = self._shard(name).scroll(
            q.ScrollRequest(limit=n, filter=self._filter(flt), with_payload=True, with_vector=True)
        )
        return [VectorPoint(str(p.id), list(p.vector or []), dict(p.payload or {})) for p in recs]

    def set_payload(self, name: str, ids: Sequence[str], payload: dict) -> None:
        import qdrant_edge as q

        if ids and self.has_collection(name):
            self._apply(name, q.UpdateOperation.set_payload([uuid.UUID(i) for i in ids], payload))

    def count(self, name: str, flt: SearchFilter | None = None) -> int:
        import qdrant_edge as q

        if not self.has_collection(name):
            return 0
        return int(self._shard(name).count(q.CountRequest(exact=True, filter=self._filter(flt))))

    def iter_ids(self, name: str) -> Iterator[str]:
        import qdrant_edge as q

        if not self.has_collection(name):
            return
        shard = self._shard(name)
        offset = None
        while True:
            recs, offset = shard.scroll(
                q.ScrollRequest(offset=offset, limit=1024, with_payload=False, with_vector=False)
            )
            for r in recs:
                yield str(r.id)
            if offset is None:
                break

    def iter_tags(self, name: str) -> Iterator[tuple[str, list[str]]]:
        import qdrant_edge as q

        if not self.has_collection(name):
            return
        shard, offset = self._shard(name), None
        tagged = q.Filter(must_not=[q.IsEmptyCondition("tags")])
        while True:
            recs, offset = shard.scroll(
                q.ScrollRequest(
                    offset=offset,
                    limit=1024,
                    filter=tagged,
                    with_payload=q.PayloadSelector.Include(["tags"]),
                    with_vector=False,
                )
            )
            for r in recs:
                yield str(r.id), list((r.payload or {}).get("tags") or [])
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
