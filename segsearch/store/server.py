"""The scale-out vector store: ``qdrant-client`` against a Qdrant server or cluster (or the
client's local mode, ``:memory:`` or a folder, which has the same API and stands in for a server
in tests). Requests are retried with backoff while they fail transiently."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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
        return cls(
            shards=s.qdrant_shards,
            replication_factor=s.qdrant_replication_factor,
            write_consistency_factor=s.qdrant_write_consistency_factor,
            on_disk=s.qdrant_on_disk,
            quantization=s.qdrant_quantization,
            oversampling=s.qdrant_oversampling,
            hnsw_m=s.hnsw_m,
            hnsw_ef_construct=s.hnsw_ef_construct,
            hnsw_ef=s.hnsw_ef,
            upsert_batch=s.qdrant_upsert_batch,
            retries=s.qdrant_retries,
            backoff_s=s.qdrant_backoff_s,
            timeout_s=s.qdrant_timeout_s,
            prefer_grpc=s.qdrant_prefer_grpc,
        )


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
                self.client = QdrantClient(
                    url=url,
                    api_key=api_key or None,
                    timeout=self.opt.timeout_s,
                    prefer_grpc=self.opt.prefer_grpc,
                    check_compatibility=False,
                )
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

    def ensure_collection(self, name: str, dim: int) -> None:
        from qdrant_client import models as m
        from qdrant_client.http.exceptions import UnexpectedResponse

        if self.has_collection(name):
            return
        o = self.opt
        quant = None
        if o.quantization == "int8":
            quant = m.ScalarQuantization(
                scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
        try:
            self._call(
                "create collection",
                self.client.create_collection,
                name,
                vectors_config=m.VectorParams(size=dim, distance=m.Distance.COSINE, on_disk=o.on_disk or None),
                shard_number=o.shards,
                replication_factor=o.replication_factor,
                write_consistency_factor=o.write_consistency_factor,
                hnsw_config=m.HnswConfigDiff(m=o.hnsw_m, ef_construct=o.hnsw_ef_construct),
                quantization_config=quant,
            )
        except (UnexpectedResponse, ValueError):
            # another indexer created it between our look and our request
            if not self.client.collection_exists(name):
                raise
        self._known.add(name)
        if self.local:
            return  # local mode has no payload indexes (and warns about them)
        for key, kind in PAYLOAD_INDEXES.items():  # the fields filters use (idempotent on the server)
            schema = getattr(m.PayloadSchemaType, kind.upper())
            self._call(
                "create payload index", self.client.create_payload_index, name, key, field_schema=schema, wait=True
            )

    @property
    def hnsw_ef(self) -> int:
        """The search beam (as the embedded store's attribute)."""
        return self.opt.hnsw_ef

    def _search_params(self, exact: bool, hnsw_ef: int | None = None):
        from qdrant_client import models as m

        if self.local:
            return None  # local mode is always exact
        if exact:
            return m.SearchParams(exact=True)
        quant = None
        if self.opt.quantization == "int8":
            quant = m.QuantizationSearchParams(rescore=True, oversampling=self.opt.oversampling)
        return m.SearchParams(hnsw_ef=hnsw_ef or self.opt.hnsw_ef, quantization=quant)

    def collections(self) -> list[str]:
        return sorted(c.name for c in self._call("list collections", self.client.get_collections).collections)

    def has_collection(self, name: str) -> bool:
        # collections are never dropped by segsearch: remember the ones seen, ask the server otherwise
        if name not in self._known and self._call("check collection", self.client.collection_exists, name):
            self._known.add(name)
        return name in self._known

    def upsert(self, name: str, points: Sequence[VectorPoint]) -> None:
        """Batches of ``upsert_batch`` points, each acknowledged only once applied (``wait=True``)."""
        from qdrant_client import models as m

        for i in range(0, len(points), self.opt.upsert_batch):
            batch = [
                m.PointStruct(id=p.id, vector=as_list(p.vector), payload=p.payload)
                for p in points[i : i + self.opt.upsert_batch]
            ]
            self._call("upsert", self.client.upsert, name, batch, wait=True)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        from qdrant_client import models as m

        if ids and self.has_collection(name):
            self._call("delete", self.client.delete, name, m.PointIdsList(points=list(ids)), wait=True)

    def delete_by_image(self, name: str, image_id: str) -> None:
        from qdrant_client import models as m

        if self.has_collection(name):
            self._call(
                "delete",
                self.client.delete,
                name,
                m.FilterSelector(filter=self._filter(SearchFilter(image_ids=[image_id]))),
                wait=True,
            )

    def set_image_paths(self, name: str, image_id: str, paths: Sequence[str]) -> None:
        self._call(
            "set payload",
            self.client.set_payload,
            name,
            {"paths": list(paths), "dirs": path_dirs(paths)},
            points=self._filter(SearchFilter(image_ids=[image_id])),
            wait=True,
        )

    @staticmethod
    def _filter(flt: SearchFilter | None):
        from qdrant_client import models as m

        if flt is None or flt.is_empty():
            return None
        spell = {
            "any": lambda k, v: m.FieldCondition(key=k, match=m.MatchAny(any=v)),
            "eq": lambda k, v: m.FieldCondition(key=k, match=m.MatchValue(value=v)),
            "range": lambda k, lo, hi: m.FieldCondition(key=k, range=m.Range(gte=lo, lte=hi)),
            "geo": lambda k, lat, lon, r: m.FieldCondition(
                key=k, geo_radius=m.GeoRadius(center=m.GeoPoint(lat=lat, lon=lon), radius=r)
            ),
        }
        return m.Filter(must=[spell[c[0]](*c[1:]) for c in flt.conditions()])

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
        if not self.has_collection(name):
            return []
        res = self._call(
            "search",
            self.client.query_points,
            name,
            query=as_list(vector),
            limit=limit,
            offset=offset or None,
            search_params=self._search_params(exact, hnsw_ef),
            query_filter=self._filter(flt),
            with_payload=True if payload_keys is None else list(payload_keys),
            score_threshold=score_threshold,
        )
        return to_hits(res.points)

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = True) -> dict[str, VectorPoint]:
        if not ids or not self.has_collection(name):
            return {}
        return to_points(
            self._call("retrieve", self.client.retrieve, name, list(ids), with_payload=True, with_vectors=with_vectors),
            with_vectors,
        )

    def sample(self, name: str, n: int, flt: SearchFilter | None = None) -> list[VectorPoint]:
        if n <= 0 or not self.has_collection(name):
            return []
        recs, _ = self._call(
            "sample",
            self.client.scroll,
            name,
            scroll_filter=self._filter(flt),
            limit=n,
            with_payload=True,
            with_vectors=True,
        )
        return [VectorPoint(str(p.id), list(p.vector or []), dict(p.payload or {})) for p in recs]

    def set_payload(self, name: str, ids: Sequence[str], payload: dict) -> None:
        from qdrant_client import models as m

        if ids and self.has_collection(name):
            self._call(
                "set payload",
                self.client.set_payload,
                name,
                payload,
                points=m.PointIdsList(points=list(ids)),
                wait=True,
            )

    def count(self, name: str, flt: SearchFilter | None = None) -> int:
        if not self.has_collection(name):
            return 0
        return int(self._call("count", self.client.count, name, count_filter=self._filter(flt), exact=True).count)

    def iter_ids(self, name: str) -> Iterator[str]:
        if not self.has_collection(name):
            return
        offset = None
        while True:
            recs, offset = self._call(
                "scroll", self.client.scroll, name, limit=1024, offset=offset, with_payload=False, with_vectors=False
            )
            for r in recs:
                yield str(r.id)
            if offset is None:
                break

    def iter_tags(self, name: str) -> Iterator[tuple[str, list[str]]]:
        from qdrant_client import models as m

        if not self.has_collection(name):
            return
        tagged = m.Filter(must_not=[m.IsEmptyCondition(is_empty=m.PayloadField(key="tags"))])
        offset = None
        while True:
            recs, offset = self._call(
                "scroll",
                self.client.scroll,
                name,
                scroll_filter=tagged,
                limit=1024,
                offset=offset,
                with_payload=["tags"],
                with_vectors=False,
            )
            for r in recs:
                yield str(r.id), list((r.payload or {}).get("tags") or [])
            if offset is None:
                break

    def close(self) -> None:
        self.client.close()
