"""Scene queries: several objects in one image, and how they relate ("a dog and a frisbee", "a
person left of a bicycle"), answered from the stored segments' vectors, boxes and masks.

How a query is answered (``SceneSearcher.search``):

1. **Candidates.** Each object's vector is searched among object segments (the caller's filters
   apply to every object): its ``candidates`` best segments.
2. **Completion.** The images the candidates fall in are ranked by what they promise (the sum of
   each object's best score seen there) and the first ``CANDIDATE_IMAGES_PER_ANSWER`` per answer
   asked for are completed: each object is searched again *inside those images only* (a filtered
   search on ``image_id``), so every candidate image knows its best ``PER_IMAGE`` segments for
   every object, not only the ones that made a global top list. When too few images survive the
   join, more of the images already found are completed (x4), then ``candidates`` grows (x4, up
   to ``MAX_CANDIDATES``); images already completed are not looked at again. Only the
   payload keys the join needs travel; the cost follows the page asked for, not the library.
3. **Assignment.** In each image, a branch-and-bound search picks one distinct segment per
   object maximising the combined score subject to every relation (``segsearch.relations``):
   box predicates from the payload, mask predicates from the SQL record's RLE, checked only for
   the images about to be returned.
4. **Score.** CLIP cosines are not comparable across texts ("dog" scores higher than
   "frisbee" everywhere), so each object's cosine is turned into a *standard score* against the
   library: ``z = (cosine - mean) / std`` over a sample of the library's object segments
   (``CALIBRATION_SAMPLE``, the same in every process, refreshed every ``CALIBRATION_TTL_S``). An
   image's score is the mean of its objects' ``z``: "on average, its objects match N standard deviations better than a
   typical segment does". It is comparable across queries and libraries, and an object below
   ``MIN_Z`` (not a plausible match at all) disqualifies the image.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field, replace

import numpy as np

from segsearch.errors import QueryError
from segsearch.relations import Relation, Seg, box_only, check_relations, holds, may_hold
from segsearch.store.vectors import SearchFilter

MAX_OBJECTS = 8
START_CANDIDATES = 256  # per object, first round (covers top_k 10 with room on real libraries)
MAX_CANDIDATES = 4096  # per object, last round: bounds a sparse join's cost
# HNSW beam of the candidate searches (at least the list asked for): candidates only choose which
# images are completed, and completion is exact. At 1M segments (bench/query.py --scene) 512 instead
# of the store's 2048 gave the same top 10 images on 60 queries, 192 -> 67 ms p50.
CANDIDATE_EF = 512
MAX_CANDIDATE_IMAGES = 1024  # images completed per round (the filtered search's id list)
CANDIDATE_IMAGES_PER_ANSWER = 8  # images completed per image asked for (top_k + offset + 1)
ASSIGN_BATCH = 32  # images whose records are fetched (and relations checked) at a time
ID_KEYS = ("image_id",)
CANDIDATE_KEYS = ("image_id", "bbox", "area_frac", "tags")
PER_IMAGE = 6  # best segments per object per image kept for the assignment
MIN_Z = 1.0  # an object matching less than 1 std above the library's typical segment is absent
CALIBRATION_SAMPLE = 2048
CALIBRATION_TTL_S = 600.0
MAX_STEPS = 20_000  # branch-and-bound steps per image (8 objects x 6 candidates worst case)


@dataclass
class ObjectMatch:
    segment_id: str
    bbox: list[int]
    area_frac: float
    score: float  # cosine with the object's query vector
    z: float  # standard score against the library (see module docstring)
    tags: list[str] = field(default_factory=list)


@dataclass
class SceneHit:
    image_id: str
    image_path: str | None
    paths: list[str]
    score: float  # mean z of the objects
    objects: list[ObjectMatch]

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class ScenePage:
    hits: list[SceneHit]
    next_offset: int | None


@dataclass
class _Cand:
    id: str
    score: float
    z: float
    seg: Seg
    area_frac: float
    tags: list[str]


_calibration: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per open vector store
_calibration_lock = threading.Lock()


def background(vectors, collection: str) -> np.ndarray:
    """A sample of the collection's object vectors (unit rows), cached per open store."""
    with _calibration_lock:
        got = _calibration.get(vectors, {}).get(collection)
        if got is not None and time.monotonic() - got[0] < CALIBRATION_TTL_S:
            return got[1]
    pts = vectors.sample(collection, CALIBRATION_SAMPLE, SearchFilter(kind="object"))
    if pts:
        B = np.asarray([p.vector for p in pts], np.float32)
        B /= np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-12)
    else:
        B = np.zeros((0, 0), np.float32)
    with _calibration_lock:
        _calibration.setdefault(vectors, {})[collection] = (time.monotonic(), B)
    return B


def weak_below(vectors, collection: str, vector) -> float | None:
    """The cosine under which a hit of this query is a weak match: ``MIN_Z`` standard deviations
    above the library's typical segment (the calibration scene queries use). None: no sample yet."""
    B = background(vectors, collection)
    v = np.asarray(vector, np.float32)
    if B.size == 0 or B.shape[1] != len(v):
        return None
    s = B @ (v / max(float(np.linalg.norm(v)), 1e-12))
    return float(s.mean() + MIN_Z * max(float(s.std()), 1e-3))


class SceneSearcher:
    def __init__(self, catalog, vectors, collection: str):
        self.catalog, self.vectors, self.collection = catalog, vectors, collection

    def _stats(self, v: np.ndarray) -> tuple[float, float]:
        B = background(self.vectors, self.collection)
        if B.size == 0 or B.shape[1] != len(v):
            return 0.0, 1.0
        s = B @ (v / max(float(np.linalg.norm(v)), 1e-12))
        return float(s.mean()), max(float(s.std()), 1e-3)

    def search(
        self,
        vectors: list[np.ndarray],
        relations: list[Relation],
        *,
        flt: SearchFilter | None = None,
        top_k: int = 10,
        offset: int = 0,
    ) -> ScenePage:
        if not 1 <= len(vectors) <= MAX_OBJECTS:
            raise QueryError(f"a scene query has 1 to {MAX_OBJECTS} objects (got {len(vectors)})")
        check_relations(len(vectors), relations)
        base = replace(flt or SearchFilter(), kind="object")
        stats = [self._stats(v) for v in vectors]
        want = offset + top_k + 1
        needs_masks = any(not box_only(r.predicate) for r in relations)
        ranked: list[tuple[float, str, list[_Cand]]] = []
        done: set[str] = set()  # images completed (and assigned) so far
        n, m = START_CANDIDATES, CANDIDATE_IMAGES_PER_ANSWER * want
        partial, exhausted = self._candidates(vectors, stats, base, n)
        while True:
            order = [i for i, _ in sorted(partial.items(), key=lambda kv: -sum(kv[1]))]
            batch = [i for i in order[:m] if i not in done][:MAX_CANDIDATE_IMAGES]
            if batch:
                done.update(batch)
                ranked += self._complete(vectors, stats, base, relations, batch, needs_masks, want)
                ranked.sort(key=lambda t: -t[0])
            if len(ranked) >= want:
                break
            if m < len(order):  # cheap first: complete more of the images already found
                m *= 4
            elif not exhausted and n < MAX_CANDIDATES:  # then look wider
                n = min(MAX_CANDIDATES, n * 4)
                partial, exhausted = self._candidates(vectors, stats, base, n)
            else:
                break
        page = ranked[offset : offset + top_k]
        hits = self._hits(page)
        return ScenePage(hits, offset + top_k if len(ranked) > offset + top_k else None)

    def _candidates(self, vectors, stats, base, n) -> tuple[dict[str, list[float]], bool]:
        """Each object's n best segments: image id -> each object's best z seen there (MIN_Z for
        an object not seen there yet), and whether the library had fewer than asked."""
        partial: dict[str, list[float]] = {}
        exhausted = True
        for k, (v, (mu, sd)) in enumerate(zip(vectors, stats)):
            # only hits that can count (z >= MIN_Z) travel
            floor = _cosine_floor(mu, sd)
            ef = min(max(CANDIDATE_EF, n), self.vectors.hnsw_ef)  # never wider than the store's own beam
            hits = self.vectors.search(
                self.collection, v, n, base, score_threshold=floor, payload_keys=ID_KEYS, hnsw_ef=ef
            )
            exhausted &= len(hits) < n
            for h in hits:
                z = (h.score - mu) / sd
                if z >= MIN_Z:
                    best = partial.setdefault(h.payload.get("image_id"), [MIN_Z] * len(vectors))
                    best[k] = max(best[k], z)
        return partial, exhausted

    def _complete(self, vectors, stats, base, relations, image_ids, needs_masks, want):
        """Each object's best segments inside these images only (a filtered search), then the
        best assignment per image; the images that hold every object in the relations, scored."""
        inside = replace(base, image_ids=image_ids)
        per: list[dict[str, list[_Cand]]] = []
        for v, (mu, sd) in zip(vectors, stats):
            # exact: the filter leaves a few thousand points; brute force over them gives each image
            # its true best segments at the same cost as the graph (1M segments, warm: AND 45 vs 43 ms)
            hits = self.vectors.search(
                self.collection,
                v,
                len(image_ids) * PER_IMAGE,
                inside,
                score_threshold=_cosine_floor(mu, sd),
                exact=True,
                payload_keys=CANDIDATE_KEYS,
            )
            by_image: dict[str, list[_Cand]] = {}
            for h in hits:
                z = (h.score - mu) / sd
                if z < MIN_Z:
                    break  # hits come best first
                p = h.payload
                lst = by_image.setdefault(p["image_id"], [])
                if len(lst) < PER_IMAGE:
                    af = float(p.get("area_frac", 0.0))
                    seg = Seg(tuple(p.get("bbox", (0, 0, 0, 0))), af)
                    lst.append(_Cand(h.id, h.score, z, seg, af, p.get("tags", [])))
            per.append(by_image)
        bounds = []  # images where every object has a candidate, best upper bound first
        for iid in image_ids:
            lists = [d.get(iid) for d in per]
            if all(lists):
                bounds.append((sum(lst[0].z for lst in lists) / len(lists), iid, lists))
        bounds.sort(key=lambda t: -t[0])
        ranked: list[tuple[float, str, list[_Cand]]] = []
        for i in range(0, len(bounds), ASSIGN_BATCH):
            batch = bounds[i : i + ASSIGN_BATCH]
            if len(ranked) >= want and batch[0][0] <= ranked[want - 1][0]:
                break  # no image left in this set can enter the page
            if needs_masks:  # images where no assignment's boxes allow the relations: no mask read
                batch = self._geometry_allows(batch, relations)
            ids = [c.id for _, _, lists in batch for lst in lists for c in lst]
            committed = committed_segments(self.catalog, ids, with_rle=needs_masks)
            for _, iid, lists in batch:
                lists = [[c for c in lst if c.id in committed] for lst in lists]  # only committed segments
                if not all(lists):
                    continue
                if needs_masks:
                    for lst in lists:
                        for c in lst:
                            c.seg.rle = committed[c.id]
                best = assign(lists, relations)
                if best is not None:
                    ranked.append((best[0], iid, best[1]))
            ranked.sort(key=lambda t: -t[0])
        return ranked

    def _geometry_allows(self, batch, relations):
        """The images of ``batch`` where some assignment's boxes allow every relation (``may_hold``,
        a necessary condition: what it drops could not be returned)."""
        if any(r.predicate == "overlaps" for r in relations):  # its touch distance needs the image size
            diag = self.catalog.image_diagonals([iid for _, iid, _ in batch])
            for _, iid, lists in batch:
                for lst in lists:
                    for c in lst:
                        c.seg.diag = diag.get(iid)
        return [b for b in batch if assign(b[2], relations, test=may_hold, first=True) is not None]

    def _hits(self, page) -> list[SceneHit]:
        paths = self.catalog.paths_by_image(iid for _, iid, _ in page)
        out = []
        for score, iid, chosen in page:
            p = paths.get(iid, [])
            objs = [
                ObjectMatch(c.id, [int(round(v)) for v in c.seg.bbox], c.area_frac, c.score, round(c.z, 4), c.tags)
                for c in chosen
            ]
            out.append(SceneHit(iid, p[0] if p else None, p, round(score, 4), objs))
        return out


def _cosine_floor(mu: float, sd: float) -> float:
    """The store's score (a cosine: both backends' collections use the cosine distance) at
    z = MIN_Z, a hair lower for float rounding."""
    return mu + MIN_Z * sd - 1e-6


def committed_segments(catalog, ids: list[str], *, with_rle: bool) -> dict:
    """Which of these segments have a committed SQL record (a vector left by an interrupted run has
    none), with their RLE masks when relations need them: id -> RLE (or None)."""
    from sqlalchemy import select

    from segsearch.store.schema import SegmentRow

    cols = (SegmentRow.id, SegmentRow.rle) if with_rle else (SegmentRow.id,)
    out: dict = {}
    with catalog.Session() as s:
        for start in range(0, len(ids), 900):
            for row in s.execute(select(*cols).where(SegmentRow.id.in_(ids[start : start + 900]))):
                out[row[0]] = row[1] if with_rle else None
    return out


def assign(lists: list[list[_Cand]], relations: list[Relation], *, test=holds, first: bool = False):
    """The best assignment of one distinct candidate per object under the relations
    (branch and bound over candidates sorted by z) as (mean z, candidates), or None. ``test``
    decides a relation (``may_hold``: from the boxes alone); ``first``: any assignment will do."""
    n = len(lists)
    by_obj: dict[int, list[Relation]] = {}
    for r in relations:  # a relation is checked once both its objects are chosen
        by_obj.setdefault(max(r.subject, r.object), []).append(r)
    rest = [sum(lst[0].z for lst in lists[i:]) for i in range(n)] + [0.0]
    best: list = [-np.inf, None]
    chosen: list[_Cand] = []
    steps = 0
    checked: dict[tuple[str, str, str], bool] = {}

    def ok(r: Relation) -> bool:
        s, o = chosen[r.subject], chosen[r.object]
        key = (s.id, r.predicate, o.id)
        if key not in checked:
            checked[key] = test(r.predicate, s.seg, o.seg)  # (mask predicates test the boxes first)
        return checked[key]

    def dfs(i: int, total: float) -> None:
        nonlocal steps
        if total + rest[i] <= best[0] or steps > MAX_STEPS or (first and best[1] is not None):
            return
        if i == n:
            best[0], best[1] = total, list(chosen)
            return
        used = {c.id for c in chosen}
        for c in lists[i]:
            steps += 1
            if c.id in used:
                continue
            chosen.append(c)
            if all(ok(r) for r in by_obj.get(i, ())):
                dfs(i + 1, total + c.z)
            chosen.pop()

    dfs(0, 0.0)
    if best[1] is None:
        return None
    return best[0] / n, best[1]
