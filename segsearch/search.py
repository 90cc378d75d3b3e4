"""Search over stored segments: text or image query -> CLIP vector -> vector index -> hits joined
with their SQL records, as a flat page or grouped per image. Shared by the library API
(``segsearch.Library.search``), ``segsearch search`` and the HTTP API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from segsearch.store.sql import Catalog
from segsearch.store.vectors import SearchFilter, VectorIndex

PROMPT_TEMPLATE = "a photo of a {}."
NEGATIVE_WEIGHT = 0.5  # "red car, not a toy": query - 0.5 * "toy"; 1.0 overshot into unrelated segments
MAX_GROUP_FETCH = 5000  # segments fetched to fill grouped pages (bounds a deep page's cost)
_PHRASE_STARTS = ("a ", "an ", "the ", "photo", "picture", "image", "this ", "my ", "some ")


def prompt_for(text: str, template: str | None = PROMPT_TEMPLATE) -> str:
    """CLIP works best on caption-like text: a bare noun phrase ("red car") gets the template,
    anything already phrased ("a photo of my dog", "the red car") is used as written."""
    t = " ".join(text.split())
    if not template or t.lower().startswith(_PHRASE_STARTS):
        return t
    return template.format(t)


@dataclass
class Hit:
    segment_id: str
    image_id: str
    image_path: str | None
    paths: list[str]
    kind: str
    bbox: list[int]  # [x, y, w, h] pixels of the orientation-corrected image
    area: int
    area_frac: float
    score: float
    predicted_iou: float | None
    stability_score: float | None
    tags: list[str] = field(default_factory=list)  # concepts that tagged the segment
    # a video's segments: a track's span and its best frame (bbox is there); a keyframe's time
    start_s: float | None = None
    end_s: float | None = None
    best_s: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Group:
    """One image's best segments, for results grouped per image (ranked by the best one)."""

    image_id: str
    image_path: str | None
    score: float
    hits: list[Hit]


@dataclass
class SearchPage:
    hits: list[Hit]
    groups: list[Group] | None = None  # when grouped per image
    next_offset: int | None = None  # offset of the next page, None on the last one


def unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def minus(vector: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """The query vector pushed away from a negative text's vector, unit length again."""
    return unit(np.asarray(vector, np.float32) - NEGATIVE_WEIGHT * np.asarray(negative, np.float32))


class Searcher:
    def __init__(self, catalog: Catalog, vectors: VectorIndex, embedder, collection: str):
        self.catalog = catalog
        self.vectors = vectors
        self.embedder = embedder
        self.collection = collection

    def text_vector(self, text: str, *, template: str | None = PROMPT_TEMPLATE) -> np.ndarray:
        return self.embedder.embed_texts([prompt_for(text, template)])[0]

    def image_vector(self, pil_image) -> np.ndarray:
        return self.embedder.embed_images([pil_image])[0]

    def search_vector(
        self,
        vector,
        *,
        top_k: int = 10,
        flt: SearchFilter | None = None,
        offset: int = 0,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        # Hits are only returned for segments whose SQL record says the image is indexed; a
        # vector left by an interrupted run is skipped (over-fetch a little to still fill top_k).
        want = top_k
        fetch = top_k + 8
        hits: list[Hit] = []
        while True:
            raw = self.vectors.search(
                self.collection, vector, fetch, flt, offset=offset, score_threshold=score_threshold
            )
            rows = self.catalog.get_segments(h.id for h in raw)
            paths = self.catalog.paths_by_image(r.image_id for r in rows.values())
            hits = []
            for h in raw:
                r = rows.get(h.id)
                if r is None:
                    continue
                p = paths.get(r.image_id, [])
                hits.append(
                    Hit(
                        r.id,
                        r.image_id,
                        p[0] if p else None,
                        p,
                        r.kind,
                        r.bbox,
                        int(r.area),
                        float(r.area_frac),
                        h.score,
                        r.predicted_iou,
                        r.stability_score,
                        list(h.payload.get("tags") or []),
                        r.start_s,
                        r.end_s,
                        r.best_s,
                    )
                )
            if len(hits) >= want or len(raw) < fetch:
                return hits[:want]
            fetch *= 2

    def page(
        self,
        vector,
        *,
        top_k: int = 10,
        offset: int = 0,
        flt: SearchFilter | None = None,
        score_threshold: float | None = None,
        group_by_image: bool = False,
        group_size: int = 3,
    ) -> SearchPage:
        """One page of results: ``top_k`` hits from ``offset``, or, grouped, ``top_k`` images from
        ``offset`` with up to ``group_size`` best segments each."""
        if not group_by_image:
            hits = self.search_vector(vector, top_k=top_k + 1, flt=flt, offset=offset, score_threshold=score_threshold)
            return SearchPage(hits=hits[:top_k], next_offset=offset + top_k if len(hits) > top_k else None)
        need = (offset + top_k + 1) * group_size * 4
        hits = self.search_vector(vector, top_k=min(need, MAX_GROUP_FETCH), flt=flt, score_threshold=score_threshold)
        groups: dict[str, list[Hit]] = {}
        for h in hits:
            g = groups.setdefault(h.image_id, [])
            if len(g) < group_size:
                g.append(h)
        ordered = list(groups.values())
        page = [Group(g[0].image_id, g[0].image_path, g[0].score, g) for g in ordered[offset : offset + top_k]]
        more = len(ordered) > offset + top_k
        return SearchPage(
            hits=[h for g in page for h in g.hits], groups=page, next_offset=offset + top_k if more else None
        )
