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
* **Solved by Newton's method** (IRLS, a few iterations on at most a few hundred points of CLIP's
  512-1024 dimensions: milliseconds). Re-training is incremental: new labels are merged into the
  stored ones (a segment relabelled moves from one side to the other) and Newton starts from the
  stored weights.

A concept *tags* segments whose probability passes its threshold: the existing library when it is
trained (by a vector search with the weight vector: ``w.x + b`` is monotone in the cosine of
``x`` with ``w`` for unit ``x``, so the tagged set is one thresholded search), and every segment
indexed from then on (the writer applies every concept of its collection to each write group).
Tags live in SQL (``segment_tags``) and in the vector payload (``tags``), where filters use them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
THRESHOLD = 0.5  # probability at which a segment is tagged
MAX_TAGGED = 20_000  # segments tagged in the existing library when trained (a broader concept is a filter, not a tag)
MAX_LABELS = 5_000  # labelled segments kept per concept
NEWTON_STEPS = 25


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


@dataclass
class ConceptModel:
    w: np.ndarray  # (D,) float32
    b: float
    threshold: float = THRESHOLD

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32) @ self.w + np.float32(self.b)

    def proba(self, x: np.ndarray) -> np.ndarray:
        return sigmoid(self.logits(x))

    @property
    def direction(self) -> np.ndarray:
        """The unit vector a vector search ranks by (same order as the probability)."""
        n = float(np.linalg.norm(self.w))
        return self.w / n if n > 0 else self.w

    def cosine_cut(self) -> float:
        """The cosine with ``direction`` at which a unit vector reaches ``threshold``."""
        n = float(np.linalg.norm(self.w))
        logit = float(np.log(self.threshold / (1 - self.threshold)))
        return (logit - self.b) / n if n > 0 else 1.0

    def probability_of_cosine(self, cos: float) -> float:
        n = float(np.linalg.norm(self.w))
        return float(sigmoid(cos * n + self.b))

    def to_json(self) -> dict:
        return {"w": [round(float(v), 6) for v in self.w], "b": float(self.b), "threshold": self.threshold}

    @classmethod
    def from_json(cls, d: dict) -> ConceptModel:
        return cls(np.asarray(d["w"], np.float32), float(d["b"]), float(d.get("threshold", THRESHOLD)))


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
) -> ConceptModel:
    """Fit the concept (see the module docstring). Rows are CLIP vectors (normalised here)."""
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
    y = np.concatenate([np.ones(len(P)), np.zeros(len(N)), np.zeros(len(B))])
    c = np.concatenate([np.ones(len(P)), np.ones(len(N)), np.full(len(B), max(len(P), 1) / max(len(B), 1))])
    Xa = np.hstack([X, np.ones((len(X), 1))])
    prior = np.concatenate([w0, [b0]]).astype(np.float64)
    lam = np.full(dim + 1, PRIOR)
    lam[-1] = 1e-3  # the bias is nearly free
    theta = np.concatenate([init.w, [init.b]]).astype(np.float64) if init is not None and len(init.w) == dim else prior

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
    return ConceptModel(theta[:-1].astype(np.float32), float(theta[-1]))


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
            self.b = np.asarray([c.model.b for c in concepts], np.float32)
            self.cut = np.log(np.asarray([c.model.threshold / (1 - c.model.threshold) for c in concepts], np.float32))

    def __bool__(self) -> bool:
        return bool(self.names)

    def tags(self, vectors: np.ndarray) -> list[list[tuple[str, float]]]:
        """Per vector: (concept, probability) of every concept it passes."""
        if not self.names or not len(vectors):
            return [[] for _ in range(len(vectors))]
        x = _unit_rows(vectors)
        z = x @ self.W.T + self.b
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
        return Concept.from_row(row, len(self.store.tagged(name)))

    def tagger(self) -> Tagger:
        return Tagger([Concept.from_row(r) for r in self.store.all(self.collection)])

    def _vectors(self, ids: list[str]) -> np.ndarray:
        if not ids:
            return np.zeros((0, 0), np.float32)
        rows = self.catalog.get_segments(ids)  # SQL first: a malformed id is simply unknown there
        points = self.vectors.retrieve(self.collection, [i for i in ids if i in rows])
        missing = [i for i in ids if i not in rows or i not in points]
        if missing:
            raise QueryError(f"unknown segment ids (not indexed in this library): {missing[:5]}")
        return np.stack([np.asarray(points[i].vector, np.float32) for i in ids])

    def learn(
        self,
        name: str,
        *,
        text: str | None = None,
        positives=(),
        negatives=(),
        replace: bool = False,
    ) -> Concept:
        """Create a concept or add labels to it (``replace``: start over), train, and tag the
        library's segments it matches."""
        check_name(name)
        old = None if replace else self.store.get(name)
        if old is not None and old.collection != self.collection:
            old = None  # the library changed its CLIP model: the old labels' vectors are gone with it
        text = text if text is not None else (old.text if old is not None else None)
        if text is not None and not text.strip():
            text = None
        pos, neg = merge_labels(old.positives if old else [], old.negatives if old else [], positives, negatives)
        if not pos and text is None:
            raise QueryError("a concept needs a text or at least one positive segment")
        P, N = self._vectors(pos), self._vectors(neg)
        labelled = set(pos) | set(neg)
        bg = [p for p in self.vectors.sample(self.collection, BACKGROUND) if p.id not in labelled and p.vector]
        B = np.stack([np.asarray(p.vector, np.float32) for p in bg]) if bg else np.zeros((0, 0), np.float32)
        tv = self.text_vector(text) if text is not None else None
        init = ConceptModel.from_json(old.model) if old is not None else None
        model = train(P, N, B, tv, init=init)
        row = new_row(name, text, self.collection, pos, neg, model, old)
        hits = self.vectors.search(self.collection, model.direction, MAX_TAGGED, score_threshold=model.cosine_cut())
        segs = self.catalog.get_segments(h.id for h in hits)
        tags = [
            SegmentTagRow(
                segment_id=h.id,
                concept=name,
                image_id=segs[h.id].image_id,
                score=model.probability_of_cosine(h.score),
            )
            for h in hits
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
        """Segments ranked by the concept's probability (a vector search along its weights); each
        hit's ``score`` is that probability."""
        model = self.get(name).model
        hits = searcher.search_vector(model.direction, top_k=top_k, flt=flt, offset=offset)
        for h in hits:
            h.score = round(model.probability_of_cosine(h.score), 6)
        return hits
