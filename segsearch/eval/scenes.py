"""Quality of scene queries and of concepts, measured in the shapes world (``bench/quality.py
--scene``). Ground truth: each held-out scene's visible masks and labels.

* **Scene queries.** From the ground truth, every ordered pair of distinct-label objects in an
  image gives an AND query (``"red circle" and "blue square"``) and, for each predicate that holds
  between the two true masks, a relation query. A returned image is correct when its ground
  truth has objects of the two labels in that relation (the same predicate definitions,
  ``segsearch.relations``, applied to the *true* masks). precision@5 = correct in the top 5 /
  min(5, images that are correct answers), per AND query and per predicate, on up to
  ``max_queries`` queries each (deterministic).
* **Concepts** the text cannot name: ``border`` (a shape touching the image border) and
  ``small-stars`` (a star under 2% of the image). A segment is positive when it matches (IoU >=
  0.5) a ground-truth object with the property. precision@10 of the concept's ranking, on
  segments not used as labels: from its text alone, then after 5, 10 and 20 labels (half
  positive, half negative, drawn at random among matched segments; each step adds to the last, so
  re-training is the incremental path users take).
"""

from __future__ import annotations

import random

import numpy as np

from segsearch.eval.quality import HIT_IOU, EvalSet, iou_matrix
from segsearch.masks import decode_rle, encode_rle
from segsearch.relations import PREDICATES, Relation, Seg, holds

CONCEPTS = {
    # name: (text a user would try, property of a ground-truth object (mask, label))
    # visual, but not in the words the model knows: colour families and "round"
    "warm": ("a warm coloured shape", lambda m, lab: lab.split()[0] in ("red", "orange", "yellow")),
    "round": ("a round shape", lambda m, lab: lab.split()[1] in ("circle", "ring")),
    # where and how big: the crop CLIP sees is centred and resized, so its vector hardly holds them
    "border": ("a shape touching the edge", lambda m, lab: bool(m[[0, -1]].any() or m[:, [0, -1]].any())),
    "small-stars": ("a small star", lambda m, lab: lab.endswith("star") and m.mean() < 0.02),
}
LABEL_STEPS = (5, 10, 20)


def _seg(mask: np.ndarray) -> Seg:
    ys, xs = np.nonzero(mask)
    box = (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))
    return Seg(box, float(mask.mean()), encode_rle(mask))


def _gt(eval_set: EvalSet) -> dict[str, list[tuple[str, Seg]]]:
    return {
        str(im.path.resolve()): [(lab, _seg(m)) for lab, m in zip(im.labels, im.masks) if m.any()]
        for im in eval_set.images
    }


def _answers(gt, a: str, pred: str | None, b: str) -> set[str]:
    out = set()
    for path, objs in gt.items():
        for i, (la, sa) in enumerate(objs):
            for j, (lb, sb) in enumerate(objs):
                if i != j and la == a and lb == b and (pred is None or holds(pred, sa, sb)):
                    out.add(path)
    return out


def scene_quality(library, eval_set: EvalSet, *, max_queries: int = 40, seed: int = 0) -> dict:
    gt = _gt(eval_set)
    queries: dict[str, set] = {"and": set(), **{p: set() for p in PREDICATES}}
    for objs in gt.values():
        for i, (la, sa) in enumerate(objs):
            for j, (lb, sb) in enumerate(objs):
                if i == j or la == lb:
                    continue
                if i < j:
                    queries["and"].add((la, None, lb))
                for p in PREDICATES:
                    if holds(p, sa, sb):
                        queries[p].add((la, p, lb))
    rng = random.Random(seed)
    report = {}
    for kind, qs in queries.items():
        qs = sorted(qs)
        rng.shuffle(qs)
        p5 = []
        for a, pred, b in qs[:max_queries]:
            truth = _answers(gt, a, pred, b)
            rels = [Relation(0, pred, 1)] if pred else []
            page = library.scene_search([a, b], rels, top_k=5)
            got = [h.image_path for h in page.hits]
            p5.append(sum(g in truth for g in got) / max(1, min(5, len(truth))))
        report[kind] = {"precision_at_5": round(float(np.mean(p5)), 3) if p5 else None, "queries": len(p5)}
    return report


def concept_quality(library, eval_set: EvalSet, *, seed: int = 0, repeats: int = 5) -> dict:
    """precision@10 of each concept from text alone and after each number of labels, averaged over
    ``repeats`` independent draws of the labels."""
    gt_by_path = {str(im.path.resolve()): im for im in eval_set.images}
    catalog = library.catalog
    # every object segment, matched to ground truth: segment id -> the matched object's (mask, label)
    matched: dict[str, tuple[np.ndarray, str]] = {}
    for path, im in gt_by_path.items():
        known = catalog.lookup_path(path)
        segs = [r for r in catalog.image_segments(known[0].image_id) if r.rle] if known else []
        if not segs:
            continue
        ious = iou_matrix(np.stack([decode_rle(r.rle) for r in segs]), im.masks)
        for r, row in zip(segs, ious):
            j = int(row.argmax()) if len(row) else -1
            if j >= 0 and row[j] >= HIT_IOU:
                matched[r.id] = (im.masks[j], im.labels[j])
    report = {}
    for name, (text, prop) in CONCEPTS.items():
        truth = {sid for sid, (m, lab) in matched.items() if prop(m, lab)}
        if not truth:
            continue
        cname = f"eval-{name}"
        runs: dict[str, list[float]] = {"text_only": [], **{f"after_{k}": [] for k in LABEL_STEPS}}
        for rep in range(repeats):
            rng = random.Random(seed * 1000 + rep)
            pos_pool, neg_pool = sorted(truth), sorted(set(matched) - truth)
            rng.shuffle(pos_pool)
            rng.shuffle(neg_pool)
            library.concepts().learn(cname, text=text, replace=True)
            runs["text_only"].append(_p_at_10(library, cname, truth, set()))
            used_pos: list[str] = []
            used_neg: list[str] = []
            for k in LABEL_STEPS:
                new_pos = pos_pool[len(used_pos) : k // 2 + k % 2]
                new_neg = neg_pool[len(used_neg) : k // 2]
                library.learn_concept(cname, positives=new_pos, negatives=new_neg)
                used_pos += new_pos
                used_neg += new_neg
                runs[f"after_{k}"].append(_p_at_10(library, cname, truth, set(used_pos) | set(used_neg)))
        library.concepts().remove(cname)
        row = {"positives_in_library": len(truth), **{k: round(float(np.mean(v)), 3) for k, v in runs.items()}}
        row["gain_after_20"] = round(row[f"after_{LABEL_STEPS[-1]}"] - row["text_only"], 3)
        report[name] = row
    return report


def _p_at_10(library, name: str, truth: set, exclude: set) -> float:
    hits = library.concept_search(name, top_k=10 + len(exclude), filters={"kind": "object"})
    hits = [h for h in hits if h.segment_id not in exclude][:10]
    return round(sum(h.segment_id in truth for h in hits) / max(1, min(10, len(truth - exclude))), 3)


def scene_report(eval_set: EvalSet, settings, *, masks: str = "sam", max_queries: int = 40) -> dict:
    """Index ``eval_set`` into the (fresh) library of ``settings`` with SAM (``masks="sam"``) or
    with the ground-truth masks (``"ground-truth"``: the query engine without SAM's misses), then
    measure scene queries and concepts."""
    import time

    from segsearch.eval.quality import GroundTruthMasks
    from segsearch.library import Library
    from segsearch.runtime import Models

    t0 = time.perf_counter()
    gen = GroundTruthMasks(eval_set, settings.max_image_pixels) if masks == "ground-truth" else None
    models = Models(settings, mask_generator=gen)
    with Library(settings=settings, models=models) as library:
        library.index([im.path.resolve() for im in eval_set.images])
        t1 = time.perf_counter()
        out = {
            "masks": masks,
            "images": len(eval_set.images),
            "scene": scene_quality(library, eval_set, max_queries=max_queries),
            "concepts": concept_quality(library, eval_set),
        }
    out["seconds"] = {"index": round(t1 - t0, 1), "evaluate": round(time.perf_counter() - t1, 1)}
    return out


def format_scene_report(r: dict) -> str:
    lines = [f"scene queries, {r['images']} held-out scenes, masks from {r['masks']}: precision@5 (queries)"]
    for kind, v in r["scene"].items():
        p = "  n/a" if v["precision_at_5"] is None else f"{v['precision_at_5']:.3f}"
        lines.append(f"  {kind:12s} {p}  ({v['queries']})")
    lines.append("concepts: precision@10 text only -> after 5 / 10 / 20 labels (gain)")
    for name, v in r["concepts"].items():
        lines.append(
            f"  {name:12s} {v['text_only']:.3f} -> {v['after_5']:.3f} / {v['after_10']:.3f} / {v['after_20']:.3f}"
            f"  ({v['gain_after_20']:+.3f}; {v['positives_in_library']} positive segments)"
        )
    return "\n".join(lines)
