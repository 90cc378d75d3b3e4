"""Spatial relations between two segments of one image, from their stored boxes and masks.

Every predicate is a plain function of the subject and the object (``Seg``: box, area, and the COCO
RLE mask when a predicate needs it). The definitions, in pixels of the orientation-corrected image:

* ``left_of`` / ``right_of`` / ``above`` / ``below``: the centres are apart along that axis by at
  least ``AXIS_MARGIN`` of the two boxes' mean extent on it (so two boxes whose centres nearly
  line up are neither left nor right of each other).
* ``near``: the gap between the boxes is at most ``NEAR_GAP`` times the boxes' mean longer side
  (touching and overlapping boxes are near).
* ``larger_than``: the subject's mask area is at least ``LARGER`` times the object's.
* ``inside``: the subject is surrounded by the object: the object covers at least ``SURROUND`` of
  the ring just outside the subject's mask (its box grown by ``RING`` of the box size, minus the
  subject), and the subject's box lies within the object's. A shape painted on another one is
  inside it although SAM's mask of the other has a hole there. ``contains`` is the converse.
* ``overlaps``: the masks overlap or touch (within ``TOUCH`` of the image diagonal, >= 2 px) and
  their boxes intersect: occlusion makes SAM's masks of overlapping objects share a border.

The mask predicates use pycocotools' RLE operations (intersection areas without decoding) except
``overlaps``, which decodes the two masks inside their union box only (``masks.decode_window``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segsearch.errors import QueryError

AXIS_MARGIN = 0.25
NEAR_GAP = 0.5
LARGER = 1.5
SURROUND = 0.85
RING = 0.15
TOUCH = 0.01

PREDICATES = ("left_of", "right_of", "above", "below", "inside", "contains", "overlaps", "near", "larger_than")
MASK_PREDICATES = frozenset({"inside", "contains", "overlaps"})
# strict orders: a cycle among them (0 left_of 1, 1 left_of 0) can never hold
_ORDERS = {
    "left_of": ("x", False),
    "right_of": ("x", True),
    "above": ("y", False),
    "below": ("y", True),
    "inside": ("in", False),
    "contains": ("in", True),
    "larger_than": ("size", False),
}
_AXES = {"x": "left_of/right_of", "y": "above/below", "in": "inside/contains", "size": "larger_than"}


@dataclass
class Seg:
    bbox: tuple[float, float, float, float]  # x, y, w, h
    area: float  # mask area (any unit shared by the pair: pixels or fraction of the image)
    rle: dict | None = None  # COCO RLE {"size": [h, w], "counts": ...}
    diag: float | None = None  # the image's diagonal in pixels, where known without the mask (may_hold)


@dataclass(frozen=True)
class Relation:
    subject: int
    predicate: str
    object: int


def check_relations(n_objects: int, relations: list[Relation]) -> None:
    """Raise ``QueryError`` for a relation no image can satisfy as written: an unknown predicate, an
    index out of range, an object related to itself, or a cycle of strict orders."""
    graphs: dict[str, dict[int, set[int]]] = {}
    for r in relations:
        if r.predicate not in PREDICATES:
            raise QueryError(f"unknown predicate {r.predicate!r}; use one of: {', '.join(PREDICATES)}")
        for role, i in (("subject", r.subject), ("object", r.object)):
            if not 0 <= i < n_objects:
                raise QueryError(f"relation {role} {i} is out of range: the query has {n_objects} objects (0-based)")
        if r.subject == r.object:
            raise QueryError(f"object {r.subject} cannot be {r.predicate} itself")
        if r.predicate in _ORDERS:
            axis, flip = _ORDERS[r.predicate]
            a, b = (r.object, r.subject) if flip else (r.subject, r.object)
            graphs.setdefault(axis, {}).setdefault(a, set()).add(b)
    for axis, g in graphs.items():
        cycle = _find_cycle(g)
        if cycle:
            path = " -> ".join(map(str, cycle))
            raise QueryError(f"contradictory relations: objects {path} form a cycle ({_AXES[axis]})")


def _find_cycle(g: dict[int, set[int]]) -> list[int] | None:
    state: dict[int, int] = {}
    path: list[int] = []

    def visit(u: int) -> list[int] | None:
        state[u] = 1
        path.append(u)
        for v in g.get(u, ()):
            if state.get(v) == 1:
                return path[path.index(v) :] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        state[u] = 2
        path.pop()
        return None

    for u in list(g):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


def _centre(b) -> tuple[float, float]:
    return b[0] + b[2] / 2.0, b[1] + b[3] / 2.0


def _apart(s: Seg, o: Seg, axis: int) -> float:
    """How far the object's centre lies beyond the subject's along an axis, in mean extents."""
    cs, co = _centre(s.bbox)[axis], _centre(o.bbox)[axis]
    extent = (s.bbox[2 + axis] + o.bbox[2 + axis]) / 2.0
    return (co - cs) / max(extent, 1e-9)


def box_gap(a, b) -> float:
    dx = max(0.0, b[0] - (a[0] + a[2]), a[0] - (b[0] + b[2]))
    dy = max(0.0, b[1] - (a[1] + a[3]), a[1] - (b[1] + b[3]))
    return float(np.hypot(dx, dy))


def _box_within(inner, outer, slack: float = 0.02) -> bool:
    sx, sy = slack * outer[2], slack * outer[3]
    return (
        inner[0] >= outer[0] - sx
        and inner[1] >= outer[1] - sy
        and inner[0] + inner[2] <= outer[0] + outer[2] + sx
        and inner[1] + inner[3] <= outer[1] + outer[3] + sy
    )


def _rle(r: dict) -> dict:
    counts = r["counts"]
    return {"size": list(r["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def _surrounded(s: Seg, o: Seg) -> bool:
    from pycocotools import mask as mu

    h, w = s.rle["size"]
    x, y, bw, bh = s.bbox
    gx, gy = max(2.0, RING * bw), max(2.0, RING * bh)
    x0, y0 = max(0.0, x - gx), max(0.0, y - gy)
    x1, y1 = min(float(w), x + bw + gx), min(float(h), y + bh + gy)
    ring_box = mu.frPyObjects(np.array([[x0, y0, x1 - x0, y1 - y0]], np.float64), h, w)[0]
    sub, obj = _rle(s.rle), _rle(o.rle)
    area = lambda r: float(mu.area(r))  # noqa: E731
    ring = area(ring_box) - area(sub)  # ring_box contains the subject
    if ring <= 0:
        return False
    covered = area(mu.merge([obj, ring_box], intersect=True)) - area(mu.merge([obj, sub], intersect=True))
    return covered >= SURROUND * ring


def _touching(s: Seg, o: Seg) -> bool:
    import cv2
    from pycocotools import mask as mu

    from segsearch.masks import decode_window

    h, w = s.rle["size"]
    r = int(max(2.0, TOUCH * float(np.hypot(h, w))))
    gap = box_gap(s.bbox, o.bbox)
    if gap > r:
        return False
    if gap == 0 and mu.area(mu.merge([_rle(s.rle), _rle(o.rle)], intersect=True)) > 0:
        return True  # the masks overlap: no decoding needed
    x0 = int(min(s.bbox[0], o.bbox[0])) - r
    y0 = int(min(s.bbox[1], o.bbox[1])) - r
    x1 = int(max(s.bbox[0] + s.bbox[2], o.bbox[0] + o.bbox[2])) + r + 1
    y1 = int(max(s.bbox[1] + s.bbox[3], o.bbox[1] + o.bbox[3])) + r + 1
    ms = decode_window(s.rle, x0, y0, x1, y1).astype(np.uint8)
    mo = decode_window(o.rle, x0, y0, x1, y1)
    grown = cv2.dilate(ms, np.ones((2 * r + 1, 2 * r + 1), np.uint8))
    return bool((grown.astype(bool) & mo).any())


def holds(predicate: str, s: Seg, o: Seg) -> bool:
    """Whether ``subject predicate object`` holds (masks needed only for MASK_PREDICATES)."""
    if predicate == "left_of":
        return _apart(s, o, 0) >= AXIS_MARGIN
    if predicate == "right_of":
        return _apart(o, s, 0) >= AXIS_MARGIN
    if predicate == "above":
        return _apart(s, o, 1) >= AXIS_MARGIN
    if predicate == "below":
        return _apart(o, s, 1) >= AXIS_MARGIN
    if predicate == "near":
        mean_side = (max(s.bbox[2], s.bbox[3]) + max(o.bbox[2], o.bbox[3])) / 2.0
        return box_gap(s.bbox, o.bbox) <= NEAR_GAP * mean_side
    if predicate == "larger_than":
        return s.area >= LARGER * o.area
    if predicate == "contains":
        return holds("inside", o, s)
    if predicate == "inside":
        if not _box_within(s.bbox, o.bbox) or s.bbox[2] * s.bbox[3] >= o.bbox[2] * o.bbox[3]:
            return False
        return s.rle is not None and o.rle is not None and _surrounded(s, o)
    if predicate == "overlaps":
        return s.rle is not None and o.rle is not None and _touching(s, o)
    raise QueryError(f"unknown predicate {predicate!r}")


def may_hold(predicate: str, s: Seg, o: Seg) -> bool:
    """A necessary condition of ``holds`` from the boxes alone (the masks are not read): False means
    the relation cannot hold, True that it may. Scene queries use it to skip reading the masks of
    images where no assignment of candidates can satisfy the relations. For ``overlaps`` it
    needs the image's diagonal in ``diag`` (without one, it cannot rule anything out)."""
    if predicate == "inside":
        return _box_within(s.bbox, o.bbox) and s.bbox[2] * s.bbox[3] < o.bbox[2] * o.bbox[3]
    if predicate == "contains":
        return may_hold("inside", o, s)
    if predicate == "overlaps":
        if s.diag is None and o.diag is None:
            return True
        return box_gap(s.bbox, o.bbox) <= max(2.0, TOUCH * float(s.diag or o.diag))
    return holds(predicate, s, o)


def box_only(predicate: str) -> bool:
    return predicate not in MASK_PREDICATES


def parse_relation(r) -> Relation:
    """A relation given as ``Relation``, ``(subject, predicate, object)``, a dict with those keys
    or the CLI's string ``"0 left_of 1"``."""
    if isinstance(r, Relation):
        return r
    try:
        if isinstance(r, str):
            s, p, o = r.split()
        elif isinstance(r, dict):
            s, p, o = r["subject"], r["predicate"], r["object"]
        else:
            s, p, o = r
        return Relation(int(s), str(p), int(o))
    except (ValueError, KeyError, TypeError):
        raise QueryError(
            f"cannot read relation {r!r}: write it as 'SUBJECT PREDICATE OBJECT', e.g. '0 left_of 1'"
        ) from None
