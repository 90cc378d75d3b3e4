"""Vector storage behind one small interface (``VectorIndex``), with two backends in their own
modules (as qdrant-client keeps its local and remote clients apart):

* ``store/edge.py``   ``EdgeVectorIndex`` – Qdrant Edge (``qdrant-edge-py``), in-process, one
  shard folder per collection under ``<data>/vectors``. The embedded default.
* ``store/server.py`` ``ServerVectorIndex`` – ``qdrant-client`` against a Qdrant server/cluster
  (or the client's local mode, ``:memory:`` or a path, which has the same API and stands in for
  it in tests).

This module holds what both share: the point, hit and filter types, the filter's conditions
(``SearchFilter.conditions``), result conversion and ``open_vector_index``.

Point id = segment id (UUID). Every write returns only after it is durable (Edge: flush;
server: ``wait=True``). Payload carries what filters need: ``image_id``, ``kind``,
``area_frac``, ``bbox``, ``paths`` and ``dirs`` (every ancestor folder of every path, so a
path-prefix filter is an exact keyword match on both backends); the photo's metadata when it has
some (``taken_at`` epoch seconds, ``camera`` terms, ``location`` geo point) and the ``tags`` that
concepts gave the segment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np

PAYLOAD_INDEXES = {
    "image_id": "keyword",
    "kind": "keyword",
    "dirs": "keyword",
    "area_frac": "float",
    "tags": "keyword",
    "camera": "keyword",
    "taken_at": "float",
    "location": "geo",
}


# Segment kinds of each medium: a filter on the medium is a filter on these kinds (points stored
# before videos existed need no new payload).
MEDIA_KINDS = {"photo": ("object", "image"), "video": ("track", "frame")}


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
    kind: str | None = None  # "object" | "image" | "track" | "frame"
    media: str | None = None  # "photo" (object, image) | "video" (track, frame)
    path_prefix: str | None = None  # a folder: hits whose image lies under it
    min_area: float | None = None  # fraction of the image
    max_area: float | None = None
    tags: list[str] | None = None  # every one of these concept tags
    taken_after: float | None = None  # EXIF capture time, epoch seconds (photos without one never match)
    taken_before: float | None = None
    camera: str | None = None  # make, model or both, any case ("canon", "Canon EOS R5")
    near: tuple[float, float, float] | None = None  # (lat, lon, km): photos taken within km of a point

    def is_empty(self) -> bool:
        return not self.conditions()

    def conditions(self) -> list[tuple]:
        """The filter as backend-neutral conditions, all of which must hold; each backend only
        spells them in its own types: ``("any", key, values)``, ``("eq", key, value)``,
        ``("range", key, gte, lte)``, ``("geo", key, lat, lon, radius_m)``."""
        out: list[tuple] = []
        if self.image_ids:
            out.append(("any", "image_id", list(self.image_ids)))
        if self.kind:
            out.append(("eq", "kind", self.kind))
        if self.media:
            out.append(("any", "kind", list(MEDIA_KINDS[self.media])))
        if self.path_prefix:  # every ancestor folder is in "dirs": a prefix is an exact match
            out.append(("eq", "dirs", normalize_prefix(self.path_prefix)))
        if self.min_area is not None or self.max_area is not None:
            out.append(("range", "area_frac", self.min_area, self.max_area))
        for tag in self.tags or ():
            out.append(("eq", "tags", tag))
        if self.taken_after is not None or self.taken_before is not None:
            out.append(("range", "taken_at", self.taken_after, self.taken_before))
        if self.camera:
            out.append(("eq", "camera", " ".join(self.camera.lower().split())))
        if self.near is not None:
            lat, lon, km = self.near
            out.append(("geo", "location", lat, lon, km * 1000.0))
        return out


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


def as_list(v) -> list[float]:
    return np.asarray(v, dtype=np.float32).tolist()


def to_hits(points) -> list[VectorHit]:
    """Scored points of either backend (``.id``, ``.score``, ``.payload``) as hits."""
    return [VectorHit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]


def to_points(records, with_vectors: bool) -> dict[str, VectorPoint]:
    """Retrieved records of either backend (``.id``, ``.vector``, ``.payload``) by id."""
    return {
        str(r.id): VectorPoint(
            str(r.id), list(r.vector) if with_vectors and r.vector is not None else [], dict(r.payload or {})
        )
        for r in records
    }


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
        """Nearest points; ``exact`` bypasses the HNSW index (brute force, for recall checks);
        ``payload_keys``: only these payload keys come back (a join over thousands of hits need
        not carry every hit's paths); ``hnsw_ef``: this search's beam instead of the store's."""

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = True) -> dict[str, VectorPoint]: ...

    @abstractmethod
    def sample(self, name: str, n: int, flt: SearchFilter | None = None) -> list[VectorPoint]:
        """Up to ``n`` points with their vectors: the library's background, against which scene
        scores are calibrated and concepts learn what they are not. The first ``n`` in id order:
        ids are hashes of content, so this is a uniform sample, and the same one in every process
        (a random draw would give the CLI and the server slightly different scores)."""

    @abstractmethod
    def set_payload(self, name: str, ids: Sequence[str], payload: dict) -> None:
        """Set these payload keys on these points (other keys are kept)."""

    def set_tags(self, name: str, tags: dict[str, list[str]]) -> None:
        """Each point's full list of concept tags; points sharing a list are written together."""
        by_list: dict[tuple[str, ...], list[str]] = {}
        for pid, t in tags.items():
            by_list.setdefault(tuple(sorted(t)), []).append(pid)
        for t, ids in by_list.items():
            for start in range(0, len(ids), 1000):
                self.set_payload(name, ids[start : start + 1000], {"tags": list(t)})

    @abstractmethod
    def count(self, name: str, flt: SearchFilter | None = None) -> int: ...

    @abstractmethod
    def iter_ids(self, name: str) -> Iterator[str]: ...

    @abstractmethod
    def iter_tags(self, name: str) -> Iterator[tuple[str, list[str]]]:
        """(point id, its payload ``tags``) of every point that has any."""

    @abstractmethod
    def close(self) -> None: ...

    def has_collection(self, name: str) -> bool:
        return name in self.collections()

    def optimize(self) -> None:  # noqa: B027 - optional: only the embedded backend needs it
        """Bring indexes up to date after a batch of writes (a server does this by itself)."""


def open_vector_index(settings) -> VectorIndex:
    """The backend the settings name (embedded Qdrant Edge unless ``vector_backend=server``)."""
    if settings.vector_backend == "server":
        from segsearch.store.server import ServerOptions, ServerVectorIndex

        if not settings.qdrant_url:
            from segsearch.errors import ConfigError

            raise ConfigError("vector_backend=server needs SEGSEARCH_QDRANT_URL (or --qdrant-url)")
        return ServerVectorIndex(settings.qdrant_url, settings.qdrant_api_key, ServerOptions.from_settings(settings))
    from segsearch.store.edge import EdgeVectorIndex

    return EdgeVectorIndex(
        settings.vectors_path,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construct=settings.hnsw_ef_construct,
        hnsw_ef=settings.hnsw_ef,
    )
