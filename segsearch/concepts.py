"""Concepts: a name plus a small classifier over CLIP vectors, learnt from a few labelled segments.

"Shapes touching the border" or "our kitchen table" are hard to say in text; a few thumbs up and
down on search hits say them well. A concept is a logistic regression on the segment vectors:

* **Initialised from the text** when there is one (``w0 = TEXT_SCALE * text_vector``) and
  regularised *towards* it (an L2 pull of ``PRIOR`` on ``w - w0``), so with no labels the concept is
  the text query and every label moves it from there (a linear probe initialised from the text
  vector, as in CLIP's few-shot and WiSE-FT work).
* **Negatives**: the labelled ones, plus ``BACKGROUND`` segments sampled from the library (``sample``)
  as weak negatives (their total weight equals the positives'), so a concept with only positive
  labels still learns what it is *not*.
* **Geometry**: what CLIP's crop hides (it is centred and resized) enters as five features of the
  segment: size, touching the photo's border, position and aspect (``geometry``), with weights
  that start at 0, so "small stars" or "things at the edge" can be learnt from labels.
* **Solved by Newton's method** (IRLS, a few iterations on at most a few hundred points of CLIP's
  512-1024 dimensions: milliseconds). Re-training is incremental: new labels are merged into the
  stored ones (a segment relabelled moves from one side to the other) and Newton starts from the
  stored weights.

A concept *tags* segments whose probability passes its threshold: the existing library when it is
trained (by a vector search with the weight vector: ``w.x + b`` is monotone in the cosine of
``x`` with ``w`` for unit ``x``, so the tagged set is one thresholded search; a concept that uses
geometry rescores the best ``MAX_TAGGED`` along that direction), and every segment indexed from
then on (the writer applies every concept of its collection to each write group).
Tags live in SQL (``segment_tags``) and in the vector payload (``tags``), where filters use them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from segsearch.errors import QueryError
from segsearch.store.schema import ConceptRow, SegmentTagRow, utcnow

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")  # a tag: lower case, no spaces, URL-safe
TEXT_SCALE = 20.0  # logits per unit of cosine for the text prior (CLIP's own scale is 100; 20 lets labels move it)
# L2 pull towards the text-initialised weights. Chosen on validation scenes (bench/quality.py --scene
# --split validation, 5 label draws): precision@10 after 5 / 20 labels, "warm colours" with PRIOR 1.0:
# 0.02 / 0.24, 0.3: 0.40 / 0.76, 0.1: 0.76 / 1.0, 0.03: 0.86 / 1.0 ("round": 0.52 / 0.84 -> 0.90 / 1.0).
# A strong pull keeps a misleading text (the small CLIP does not know "warm") against the labels.
PRIOR = 0.03
TEXT_Z = 3.0  # a text-only concept tags segments 3 standard deviations above the library's mean score
BACKGROUND = 512  # library segments used as weak negatives
# L2 pull of the geometry weights towards 0: size or position must earn their place. Validation
# (precision@10 after 20 labels, warm / round / border / small stars): 1.0: 1.0 / .98 / .16 / .62,
# 0.3: 1.0 / .96 / .34 / .62, 0.1: .98 / .98 / .50 / .72, 0.03: .94 / .96 / .54 / .82.
GEOMETRY_PRIOR = 0.1
GEOMETRY_MIN = 0.05  # geometry weights below this change a probability by < 5%: the concept ignores geometry
RESCORE = 2_000  # a geometry-aware concept ranks this many segments along its CLIP direction, then rescores
THRESHOLD = 0.5  # probability at which a segment is tagged
MAX_TAGGED = 20_000  # segments tagged in the existing library when trained (a broader concept is a filter, not a tag)
MAX_LABELS = 5_000  # labelled segments kept per concept
NEWTON_STEPS = 25
GEOMETRY_KEYS = ("image_id", "bbox", "area_frac")


def sigmoid(z):
    """The logistic function without overflow for large |z|."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, np.float64)))


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise QueryError(
            f"concept name {name!r}: use 1-64 lower-case letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def geometry(bbox, area_frac: float, width: int, height: int) -> np.ndarray:
    """What the crop CLIP sees hides (it is centred and resized): the segment's size, whether it
    touches the photo's border, where it is and its aspect, each roughly in [-1, 1]."""
    x, y, w, h = (float(v) for v in bbox)
    W, H = float(max(width or 1, 1)), float(max(height or 1, 1))
    border = x <= 1 or y <= 1 or x + w >= W - 1 or y + h >= H - 1
    return np.array(
        [
            np.log10(max(float(area_frac), 1e-5)) / 2 + 1,  # 100% -> 1, 1% -> 0, 0.01% -> -1
            1.0 if border else 0.0,
            2 * (x + w / 2) / W - 1,
            2 * (y + h / 2) / H - 1,
            float(np.log(max(w, 1.0) / max(h, 1.0))) / 2,
        ],
        np.float32,
    )


N_GEOMETRY = 5


@dataclass
class ConceptModel:
    w: np.ndarray  # (D,) float32: weights on the CLIP vector
    b: float
    threshold: float = THRESHOLD
    v: np.ndarray = field(default_factory=lambda: np.zeros(N_GEOMETRY, np.float32))  # weights on ``geometry``

    def logits(self, x: np.ndarray, g: np.ndarray | None = None) -> np.ndarray:
        z = np.asarray(x, np.float32) @ self.w + np.float32(self.b)
        return z + np.asarray(g, np.float32) @ self.v if g is not None and self.uses_geometry else z

    def proba(self, x: np.ndarray, g: np.ndarray | None = None) -> np.ndarray:
        return sigmoid(self.logits(x, g))

    @property
    def uses_geometry(self) -> bool:
        """Whether size or position matter to it (then a ranking along ``direction`` is rescored)."""
        return bool(np.abs(self.v).max() > GEOMETRY_MIN)

    @property
    def direction(self) -> np.ndarray:
        """The unit vector a vector search ranks by (same order as the probability, geometry aside)."""
        n = float(np.linalg.norm(self.w))
        return self.w / n if n > 0 else self.w

    def cosine_cut(self) -> float:
        """The cosine with ``direction`` at which a unit vector reaches ``threshold``."""
        n = float(np.linalg.norm(self.w))
        logit = float(np.log(self.threshold / (1 - self.threshold)))
        return (logit - self.b) / n if n > 0 else 1.0

    def probability_of_cosine(self, cos, g: np.ndarray | None = None):
        z = np.asarray(cos, np.float64) * float(np.linalg.norm(self.w)) + self.b
        if g is not None and self.uses_geometry:
            z = z + np.asarray(g, np.float64) @ self.v
        return sigmoid(z)

    def to_json(self) -> dict:
        return {
            "w": [round(float(v), 6) for v in self.w],
            "b": float(self.b),
            "v": [round(float(v), 6) for v in self.v],
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, d: dict) -> ConceptModel:
        v = np.asarray(d.get("v") or [0.0] * N_GEOMETRY, np.float32)
        return cls(np.asarray(d["w"], np.float32), float(d["b"]), float(d.get("threshold", THRESHOLD)), v)


def _unit_rows(x) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(len(x), -1) if len(x) else np.zeros((0, 0), np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True) if x.size else None
    return x / np.maximum(n, 1e-12) if x.size else x


def train(
    positives: np.ndarray,
    negatives: np.ndarray,
    background: np.ndarray,
    text: np.ndarray | None = None,
    init: ConceptModel | None = None,
    geometry: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> ConceptModel:
    """Fit the concept (see the module docstring). Rows are CLIP vectors (normalised here);
    ``geometry``: the ``geometry`` rows of the positives, negatives and background."""
    P, N, B = _unit_rows(positives), _unit_rows(negatives), _unit_rows(background)
    dim = next((a.shape[1] for a in (P, N, B) if a.size), None)
    if dim is None and text is None:
        raise QueryError("a concept needs a text or at least one labelled segment")
    dim = dim or len(text)
    w0 = TEXT_SCALE * _unit_rows([text])[0] if text is not None else np.zeros(dim, np.float32)
    # the text prior's bias: the library's typical segment sits TEXT_Z standard deviations below the cut
    if len(B):
        s = B @ w0
        b0 = -float(s.mean() + TEXT_Z * s.std()) if text is not None else -float(np.log(max(len(B), 1)))
    else:
        b0 = 0.0
    if not len(P) and not len(N):
        return ConceptModel(w0.astype(np.float32), b0)
    X = np.concatenate([a for a in (P, N, B) if a.size]).astype(np.float64)
    G = (
        np.concatenate([g for g, a in zip(geometry, (P, N, B)) if a.size]).astype(np.float64)
        if geometry is not None
        else np.zeros((len(X), N_GEOMETRY))
    )
    y = np.concatenate([np.ones(len(P)), np.zeros(len(N)), np.zeros(len(B))])
    c = np.concatenate([np.ones(len(P)), np.ones(len(N)), np.full(len(B), max(len(P), 1) / max(len(B), 1))])
    Xa = np.hstack([X, G, np.ones((len(X), 1))])
    prior = np.concatenate([w0, np.zeros(N_GEOMETRY), [b0]]).astype(np.float64)
    lam = np.concatenate([np.full(dim, PRIOR), np.full(N_GEOMETRY, GEOMETRY_PRIOR), [1e-3]])  # the bias is nearly free
    theta = prior
    if init is not None and len(init.w) == dim:
        theta = np.concatenate([init.w, init.v, [init.b]]).astype(np.float64)

    def loss(t: np.ndarray) -> float:
        z = Xa @ t
        return float(c @ (np.logaddexp(0.0, z) - y * z) + 0.5 * (lam * (t - prior) ** 2).sum())

    current = loss(theta)
    for _ in range(NEWTON_STEPS):
        p = sigmoid(Xa @ theta)
        grad = Xa.T @ (c * (p - y)) + lam * (theta - prior)
        H = (Xa * (c * p * (1 - p))[:, None]).T @ Xa + np.diag(lam)
        step = np.linalg.solve(H, grad)
        t = 1.0
        while t > 1e-4:  # backtracking: a full Newton step can overshoot on nearly separable labels
            new = loss(theta - t * step)
            if new <= current:
                break
            t /= 2
        theta, current = theta - t * step, min(new, current)
        if float(np.abs(t * step).max()) < 1e-6:
            break
    return ConceptModel(theta[:dim].astype(np.float32), float(theta[-1]), v=theta[dim:-1].astype(np.float32))


@dataclass
class Concept:
    name: str
    text: str | None
    collection: str
    positives: list[str]
    negatives: list[str]
    model: ConceptModel
    version: int
    n_tagged: int = 0

    @classmethod
    def from_row(cls, row: ConceptRow, n_tagged: int = 0) -> Concept:
        return cls(
            row.name,
            row.text,
            row.collection,
            list(row.positives),
            list(row.negatives),
            ConceptModel.from_json(row.model),
            row.version,
            n_tagged,
        )

    def summary(self) -> dict:
        return {
            "name": self.name,
            "text": self.text,
            "positives": len(self.positives),
            "negatives": len(self.negatives),
            "tagged": self.n_tagged,
            "version": self.version,
            "threshold": self.model.threshold,
        }


def merge_labels(old_pos, old_neg, pos, neg) -> tuple[list[str], list[str]]:
    """New labels win over old ones: a segment relabelled moves to its new side."""
    pos, neg = list(dict.fromkeys(pos)), list(dict.fromkeys(neg))
    if set(pos) & set(neg):
        raise QueryError(f"segments labelled both positive and negative: {sorted(set(pos) & set(neg))[:5]}")
    p = [s for s in old_pos if s not in set(neg)] + [s for s in pos if s not in set(old_pos)]
    n = [s for s in old_neg if s not in set(pos)] + [s for s in neg if s not in set(old_neg)]
    if len(p) + len(n) > MAX_LABELS:
        raise QueryError(f"a concept keeps at most {MAX_LABELS} labelled segments")
    return p, n


class Tagger:
    """Every concept of a collection, applied to a batch of vectors at index time."""

    def __init__(self, concepts: list[Concept]):
        self.names = [c.name for c in concepts]
        if concepts:
            self.W = np.stack([c.model.w for c in concepts]).astype(np.float32)
            self.V = np.stack([c.model.v if c.model.uses_geometry else 0 * c.model.v for c in concepts])
            self.b = np.asarray([c.model.b for c in concepts], np.float32)
            self.cut = np.log(np.asarray([c.model.threshold / (1 - c.model.threshold) for c in concepts], np.float32))

    def __bool__(self) -> bool:
        return bool(self.names)

    def tags(self, vectors: np.ndarray, geometries: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
        """Per vector: (concept, probability) of every concept it passes."""
        if not self.names or not len(vectors):
            return [[] for _ in range(len(vectors))]
        z = _unit_rows(vectors) @ self.W.T + self.b
        if geometries is not None:
            z = z + np.asarray(geometries, np.float32) @ self.V.T
        out = []
        for row in z:
            out.append([(self.names[j], float(sigmoid(row[j]))) for j in np.flatnonzero(row >= self.cut)])
        return out


def tag_rows(image_id: str, ids: list[str], tags: list[list[tuple[str, float]]]) -> list[SegmentTagRow]:
    return [
        SegmentTagRow(segment_id=sid, concept=name, image_id=image_id, score=score)
        for sid, t in zip(ids, tags)
        for name, score in t
    ]


def new_row(name: str, text: str | None, collection: str, pos, neg, model: ConceptModel, old=None) -> ConceptRow:
    now = utcnow()
    return ConceptRow(
        name=name,
        text=text,
        collection=collection,
        positives=list(pos),
        negatives=list(neg),
        model=model.to_json(),
        version=(old.version + 1) if old is not None else 1,
        created_at=old.created_at if old is not None else now,
        updated_at=now,
    )


class Concepts:
    """Learn, list, apply and remove the concepts of one library's embedding space."""

    def __init__(self, catalog, vectors, collection: str, text_vector):
        from segsearch.store.concepts import ConceptStore

        self.catalog, self.vectors, self.collection = catalog, vectors, collection
        self.store = ConceptStore(catalog)
        self.text_vector = text_vector  # str -> CLIP text vector (the caller's, cached or not)

    def list(self) -> list[Concept]:
        counts = self.store.tag_counts()
        return [Concept.from_row(r, counts.get(r.name, 0)) for r in self.store.all()]

    def get(self, name: str) -> Concept:
        from segsearch.errors import NotFoundError

        row = self.store.get(name)
        if row is None:
            raise NotFoundError(f"no concept named {name!r}")
        return Concept.from_row(row, self.store.tag_count(name))

    def tagger(self) -> Tagger:
        return Tagger([Concept.from_row(r) for r in self.store.all(self.collection)])

    def _labelled(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and geometry of labelled segments (unknown ids are a QueryError)."""
        if not ids:
            return np.zeros((0, 0), np.float32), np.zeros((0, N_GEOMETRY), np.float32)
        rows = self.catalog.get_segments(ids)  # SQL first: a malformed id is simply unknown there
        points = self.vectors.retrieve(self.collection, [i for i in ids if i in rows])
        missing = [i for i in ids if i not in rows or i not in points]
        if missing:
            raise QueryError(f"unknown segment ids (not indexed in this library): {missing[:5]}")
        sizes = self.store.image_sizes(r.image_id for r in rows.values())
        geo = [geometry(rows[i].bbox, rows[i].area_frac, *sizes.get(rows[i].image_id, (1, 1))) for i in ids]
        return np.stack([np.asarray(points[i].vector, np.float32) for i in ids]), np.stack(geo)

    def _geometry_of(self, payloads: list[dict]) -> np.ndarray:
        """Geometry rows from vector payloads (bbox, area_frac, image_id) and the images' sizes."""
        if not payloads:
            return np.zeros((0, N_GEOMETRY), np.float32)
        sizes = self.store.image_sizes(p.get("image_id") for p in payloads)
        return np.stack(
            [
                geometry(p.get("bbox", (0, 0, 1, 1)), p.get("area_frac", 0.0), *sizes.get(p.get("image_id"), (1, 1)))
                for p in payloads
            ]
        )

    def learn(
        self,
        name: str,
        *,
        text: str | None = None,
        positives=(),
        negatives=(),
        replace: bool = False,
        max_concepts: int | None = None,
    ) -> Concept:
        """Create a concept or add labels to it (``replace``: start over), train, and tag the
        library's segments it matches. ``max_concepts``: a new one past that many is refused."""
        check_name(name)
        existing = self.store.get(name)
        if existing is None and max_concepts is not None and len(self.store.all()) >= max_concepts:
            raise QueryError(
                f"the library holds {max_concepts:,} concepts, its limit (SEGSEARCH_MAX_CONCEPTS); remove some first"
            )
        old = None if replace else existing
        if old is not None and old.collection != self.collection:
            old = None  # the library changed its CLIP model: the old labels' vectors are gone with it
        text = text if text is not None else (old.text if old is not None else None)
        if text is not None and not text.strip():
            text = None
        pos, neg = merge_labels(old.positives if old else [], old.negatives if old else [], positives, negatives)
        if not pos and text is None:
            raise QueryError("a concept needs a text or at least one positive segment")
        (P, PG), (N, NG) = self._labelled(pos), self._labelled(neg)
        labelled = set(pos) | set(neg)
        bg = [p for p in self.vectors.sample(self.collection, BACKGROUND) if p.id not in labelled and p.vector]
        B = np.stack([np.asarray(p.vector, np.float32) for p in bg]) if bg else np.zeros((0, 0), np.float32)
        BG = self._geometry_of([p.payload for p in bg])
        tv = self.text_vector(text) if text is not None else None
        init = ConceptModel.from_json(old.model) if old is not None else None
        model = train(P, N, B, tv, init=init, geometry=(PG, NG, BG))
        row = new_row(name, text, self.collection, pos, neg, model, old)
        if model.uses_geometry:  # the best MAX_TAGGED along the CLIP direction, rescored with geometry
            hits = self.vectors.search(self.collection, model.direction, MAX_TAGGED, payload_keys=GEOMETRY_KEYS)
            probs = model.probability_of_cosine([h.score for h in hits], self._geometry_of([h.payload for h in hits]))
        else:  # one thresholded search: the probability is monotone in the cosine
            hits = self.vectors.search(
                self.collection,
                model.direction,
                MAX_TAGGED,
                score_threshold=model.cosine_cut(),
                payload_keys=("image_id",),
            )
            probs = model.probability_of_cosine([h.score for h in hits])
        keep = [(h, float(p)) for h, p in zip(hits, np.atleast_1d(probs)) if p >= model.threshold]
        segs = self.catalog.get_segments(h.id for h, _ in keep)
        tags = [
            SegmentTagRow(segment_id=h.id, concept=name, image_id=segs[h.id].image_id, score=p)
            for h, p in keep
            if h.id in segs
        ]
        self._sync_payload(self.store.save(row, tags))
        return Concept.from_row(row, len(tags))

    def remove(self, name: str) -> None:
        from segsearch.errors import NotFoundError

        before = self.store.delete(name)
        if before is None:
            raise NotFoundError(f"no concept named {name!r}")
        self._sync_payload(before)

    def _sync_payload(self, segment_ids: list[str]) -> None:
        """The vector payload's ``tags`` of these segments, rewritten from SQL (the source of truth)."""
        if not segment_ids:
            return
        lists = self.store.tags_of(segment_ids)
        self.vectors.set_tags(self.collection, {sid: lists.get(sid, []) for sid in segment_ids})

    def search(self, name: str, searcher, *, top_k: int = 10, offset: int = 0, flt=None) -> list:
        """Segments ranked by the concept's probability (a vector search along its weights, rescored
        with geometry when the concept uses it); each hit's ``score`` is that probability."""
        model = self.get(name).model
        if not model.uses_geometry:
            hits = searcher.search_vector(model.direction, top_k=top_k, flt=flt, offset=offset)
            for h in hits:
                h.score = round(float(model.probability_of_cosine(h.score)), 6)
            return hits
        hits = searcher.search_vector(model.direction, top_k=max(RESCORE, 4 * (offset + top_k)), flt=flt)
        geo = self._geometry_of([{"image_id": h.image_id, "bbox": h.bbox, "area_frac": h.area_frac} for h in hits])
        probs = model.probability_of_cosine([h.score for h in hits], geo)
        for h, p in zip(hits, np.atleast_1d(probs)):
            h.score = round(float(p), 6)
        hits.sort(key=lambda h: -h.score)
        return hits[offset : offset + top_k]
