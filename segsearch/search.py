"""Search over stored segments: text or image query -> CLIP vector -> vector index -> hits joined
with their SQL records. Shared by ``segsearch search`` and the API."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from segsearch.store.sql import Catalog
from segsearch.store.vectors import SearchFilter, VectorIndex

PROMPT_TEMPLATE = "a photo of a {}."
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

    def to_dict(self) -> dict:
        return asdict(self)


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

    def search_vector(self, vector, *, top_k: int = 10, flt: SearchFilter | None = None, offset: int = 0,
                      score_threshold: float | None = None) -> list[Hit]:
        # Hits are only returned for segments whose SQL record says the image is indexed; a
        # vector left by an interrupted run is skipped (over-fetch a little to still fill top_k).
        want = top_k
        fetch = top_k + 8
        hits: list[Hit] = []
        while True:
            raw = self.vectors.search(self.collection, vector, fetch, flt, offset=offset,
                                      score_threshold=score_threshold)
            rows = self.catalog.get_segments(h.id for h in raw)
            paths = self.catalog.images_paths(r.image_id for r in rows.values())
            hits = []
            for h in raw:
                r = rows.get(h.id)
                if r is None:
                    continue
                p = paths.get(r.image_id, [])
                hits.append(Hit(r.id, r.image_id, p[0] if p else None, p, r.kind, r.bbox, int(r.area),
                                float(r.area_frac), h.score, r.predicted_iou, r.stability_score))
            if len(hits) >= want or len(raw) < fetch:
                return hits[:want]
            fetch *= 2
