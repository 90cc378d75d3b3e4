"""Quality evaluation: do the masks find the objects, and does search return the right ones?

Works on shapes-world held-out scenes (ground truth from the generator) or on a COCO-format
folder (instances JSON + images, category names as text queries), with any registered models.
Used by ``bench/quality.py`` (figures), the default test suite (a floor) and ``segsearch demo``.

Definitions (macro-averaged over text queries, one query per class present):

* ``mask_recall``    share of ground-truth objects matched by some generated mask at IoU >= 0.75
* ``mean_best_iou``  mean over ground-truth objects of the best IoU with any generated mask
* ``precision_at_5`` correct hits in the top 5 / min(5, correct segments in the index); a hit is
  correct when its mask overlaps a ground-truth object of the queried class at IoU >= 0.5 (the
  denominator is what a perfect ranking could reach, so classes with few objects are not capped)
* ``recall_at_10``   distinct objects of the class found in the top 10 / min(10, objects of the class)

Search is over segments of kind ``object`` (the whole-image segment has no mask to judge).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segsearch.masks import MaskSet, decode_rle
from segsearch.models import amg_params
from segsearch.settings import Settings

MATCH_IOU = 0.75
HIT_IOU = 0.5


@dataclass
class GTImage:
    path: Path
    masks: np.ndarray  # (N, H, W) bool
    labels: list[str]  # class name per mask; also the text query


@dataclass
class EvalSet:
    images: list[GTImage] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({lab for im in self.images for lab in im.labels})


def shapes_eval_set(folder: Path, n: int, *, start: int = 0, split: str = "heldout", nested: float = 0.0) -> EvalSet:
    """Shapes-world scenes written as PNGs into ``folder``: ``heldout`` (the reported figures) or
    ``validation`` (a disjoint range, for choosing settings without touching the held-out set);
    ``nested``: the share of scenes with a shape painted inside another (``make_scene``)."""
    from PIL import Image

    from segsearch.eval.shapes import HELDOUT_SEEDS, VALIDATION_SEEDS, make_scene

    seeds = {"heldout": HELDOUT_SEEDS, "validation": VALIDATION_SEEDS}[split]
    folder.mkdir(parents=True, exist_ok=True)
    out = EvalSet()
    for k in range(n):
        sc = make_scene(seeds[start + k], nested=nested)
        p = folder / f"scene-{sc.seed}.png"
        Image.fromarray(sc.image).save(p)
        out.images.append(GTImage(p, sc.masks, sc.captions))
    return out


def coco_eval_set(images_dir: Path, annotations: Path, limit: int | None = None) -> EvalSet:
    """A COCO instances file: category names become labels/queries (crowd annotations skipped)."""
    from pycocotools.coco import COCO

    coco = COCO(str(annotations))
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    out = EvalSet()
    for img_id in sorted(coco.getImgIds())[:limit]:
        info = coco.loadImgs(img_id)[0]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False)) if a.get("area", 1) > 0]
        if not anns:
            continue
        masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        out.images.append(GTImage(Path(images_dir) / info["file_name"], masks, [cats[a["category_id"]] for a in anns]))
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every mask of a (N,H,W) and b (M,H,W)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1)


class CachedMasks:
    """Mask generator wrapper: each image's masks computed once, reused across crop modes."""

    name = "cached"

    def __init__(self, inner):
        self.inner = inner
        self.cache: dict[bytes, MaskSet] = {}

    def generate(self, rgb: np.ndarray) -> MaskSet:
        import hashlib

        key = hashlib.sha1(rgb.tobytes()).digest()
        if key not in self.cache:
            self.cache[key] = self.inner.generate(rgb)
        return self.cache[key]


class GroundTruthMasks:
    """An "oracle" mask generator: each eval image's ground-truth masks (by pixel content), so a
    benchmark can measure what comes after SAM (crops, CLIP, search) without SAM's misses."""

    name = "ground-truth"

    def __init__(self, eval_set: EvalSet, max_pixels: int = 100_000_000):
        import hashlib

        from segsearch.images import decode_image

        self.by_key = {
            hashlib.sha1(decode_image(im.path.read_bytes(), max_pixels=max_pixels).rgb.tobytes()).digest(): im.masks
            for im in eval_set.images
        }

    def generate(self, rgb: np.ndarray) -> MaskSet:
        import hashlib

        masks = self.by_key.get(hashlib.sha1(rgb.tobytes()).digest())
        if masks is None or not len(masks):
            return MaskSet.empty(*rgb.shape[:2])
        masks = masks[masks.reshape(len(masks), -1).any(1)]
        return MaskSet.from_masks(masks, np.ones(len(masks)), np.ones(len(masks)))


def mask_quality(eval_set: EvalSet, generator, max_pixels: int) -> dict:
    from segsearch.images import decode_image

    best = []
    n_masks = 0
    for im in eval_set.images:
        rgb = decode_image(im.path.read_bytes(), max_pixels=max_pixels).rgb
        ms = generator.generate(rgb)
        n_masks += len(ms)
        ious = iou_matrix(im.masks, ms.masks)
        best.extend(ious.max(1) if ious.shape[1] else np.zeros(len(im.masks)))
    best = np.array(best)
    return {
        "mask_recall": float((best >= MATCH_IOU).mean()),
        "mean_best_iou": float(best.mean()),
        "masks_per_image": n_masks / max(len(eval_set.images), 1),
    }


def retrieval_quality(eval_set: EvalSet, settings: Settings, models, *, queries: dict[str, str] | None = None) -> dict:
    """Index the eval images with ``settings`` (its crop mode) and run one text query per class."""
    from segsearch.library import Library
    from segsearch.store.vectors import SearchFilter

    gt_by_path = {str(im.path.resolve()): im for im in eval_set.images}
    with Library(settings=settings, models=models) as library:
        library.index([im.path.resolve() for im in eval_set.images])
        catalog, searcher = library.catalog, library.searcher()
        # how many indexed segments are correct answers for each class (the ceiling of any ranking)
        correct_segments: dict[str, int] = {}
        for im in eval_set.images:
            known = catalog.lookup_path(str(im.path.resolve()))
            segs = [r for r in catalog.image_segments(known[0].image_id) if r.rle] if known else []
            if not segs:
                continue
            ious = iou_matrix(np.stack([decode_rle(r.rle) for r in segs]), im.masks)
            for row in ious:
                for cls in {lab for lab, iou in zip(im.labels, row) if iou >= HIT_IOU}:
                    correct_segments[cls] = correct_segments.get(cls, 0) + 1
        p5, r10, per_query = [], [], {}
        for cls in eval_set.classes:
            text = (queries or {}).get(cls, cls)
            n_rel = sum(lab == cls for im in eval_set.images for lab in im.labels)
            hits = searcher.search_vector(searcher.text_vector(text), top_k=10, flt=SearchFilter(kind="object"))
            rows = catalog.get_segments(h.segment_id for h in hits)
            correct, found = [], set()
            for h in hits:
                im = gt_by_path.get(h.image_path)
                ok = False
                if im is not None:
                    m = decode_rle(rows[h.segment_id].rle)[None]
                    ious = iou_matrix(im.masks, m)[:, 0]
                    for j, (lab, iou) in enumerate(zip(im.labels, ious)):
                        if lab == cls and iou >= HIT_IOU:
                            ok = True
                            found.add((h.image_path, j))
                correct.append(ok)
            p5.append(sum(correct[:5]) / max(1, min(5, correct_segments.get(cls, 0))))
            r10.append(len(found) / min(10, n_rel))
            per_query[text] = {
                "precision_at_5": p5[-1],
                "recall_at_10": r10[-1],
                "objects": n_rel,
                "correct_segments": correct_segments.get(cls, 0),
            }
        return {
            "precision_at_5": float(np.mean(p5)),
            "recall_at_10": float(np.mean(r10)),
            "queries": len(p5),
            "per_query": per_query,
        }


def evaluate(
    eval_set: EvalSet,
    settings: Settings,
    *,
    crop_modes=("masked", "box", "blur"),
    workdir: Path | None = None,
    models_factory=None,
) -> dict:
    """Full report: mask quality once, retrieval for the settings' crop mode and each of ``crop_modes``."""
    from segsearch.runtime import Models

    from segsearch.indexer.amg import mask_generator_for

    started = time.perf_counter()
    base = Models(settings) if models_factory is None else models_factory(settings)
    cached = CachedMasks(mask_generator_for(base))
    report = mask_quality(eval_set, cached, settings.max_image_pixels)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        by_mode = {}
        for mode in dict.fromkeys([settings.crop_mode, *crop_modes]):
            s = settings.model_copy(
                update={"crop_mode": mode, "data": Path(tmp) / mode, "database_url": None, "vector_backend": "embedded"}
            )
            models = Models(
                s, sam_spec=base.sam_spec, clip_spec=base.clip_spec, mask_generator=cached, embedder=base.embedder
            )
            by_mode[mode] = retrieval_quality(eval_set, s, models)
    main = by_mode[settings.crop_mode]
    report.update(
        {
            "precision_at_5": main["precision_at_5"],
            "recall_at_10": main["recall_at_10"],
            "by_crop_mode": {
                m: {"precision_at_5": r["precision_at_5"], "recall_at_10": r["recall_at_10"]}
                for m, r in by_mode.items()
            },
            "per_query": main["per_query"],
            "images": len(eval_set.images),
            "objects": sum(len(im.labels) for im in eval_set.images),
            "queries": main["queries"],
            "sam": base.sam_spec.name,
            "clip": base.clip_spec.name,
            "crop_mode": settings.crop_mode,
            "amg": amg_params(settings),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return report


def format_report(r: dict) -> str:
    lines = [
        f"images {r['images']}  objects {r['objects']}  queries {r['queries']}  ({r['sam']} + {r['clip']})",
        f"mask_recall@{MATCH_IOU} {r['mask_recall']:.3f}   mean_best_iou {r['mean_best_iou']:.3f}   "
        f"masks/image {r['masks_per_image']:.1f}",
        f"precision@5 {r['precision_at_5']:.3f}   recall@10 {r['recall_at_10']:.3f}   (crop mode {r['crop_mode']})",
    ]
    for mode, m in r["by_crop_mode"].items():
        lines.append(f"  crop {mode:6s}  precision@5 {m['precision_at_5']:.3f}  recall@10 {m['recall_at_10']:.3f}")
    lines.append(f"{r['seconds']}s")
    return "\n".join(lines)
