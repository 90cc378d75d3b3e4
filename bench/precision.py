"""Reduced precision against fp32: do the masks and vectors stay the same, and what does it save?

    python bench/precision.py                        # bundled SAMs and CLIP, held-out scenes
    python bench/precision.py --scenes plain --n 20 --model sam-shapes-tiny

For each bundled SAM and scene kind (those of bench/prompts.py: plain, nested, small,
small-nested, 4mp) it runs the fast engine on the same held-out scenes with the image encoder in
fp32 and in bf16 (``sam_precision``, the product's default settings otherwise) and prints:

* ``kept``: the fraction of fp32's segments (masks of at least ``min_segment_area`` px) that bf16
  also returns with IoU >= 0.9, and ``added``: bf16 segments with no such fp32 mask;
* ``miou``: the mean IoU of each fp32 segment with its best bf16 match (the issue's "matched mIoU");
* encoder and whole-generator seconds per scene for both (the bundled encoders are tiny: real-size
  timings are ``bench/realsize.py --sam-precision fp32,bf16``).

Then CLIP (``clip_precision``): every fp32 segment's crop embedded with the bundled CLIP in fp32
and in bf16: the minimum and mean cosine between the two vectors, and how often the nearest of
the shapes world's label texts changes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(model: str, kind: str, args) -> tuple[dict, list]:
    from prompts import matched, scenes

    from segsearch.eval.quality import iou_matrix
    from segsearch.models import amg_params
    from segsearch.runtime import load_sam
    from segsearch.settings import Settings

    from segsearch.indexer.amg import make_mask_generator

    crops = []
    times = {"fp32": [], "bf16": []}
    gens = {}
    for prec in ("fp32", "bf16"):
        settings = Settings(sam=model, offline=True, sam_precision=prec)
        gens[prec] = make_mask_generator("fast", load_sam(settings), **amg_params(settings))
    kept, added, miou = [], [], []
    for scene in scenes(kind, "heldout", args.n):
        res = {}
        for prec in ("fp32", "bf16"):
            t = time.perf_counter()
            ms = gens[prec].generate(scene.image)
            times[prec].append((gens[prec].timings["encoder"], time.perf_counter() - t))
            m = ms.masks
            res[prec] = m[m.reshape(len(m), -1).sum(1) >= settings.min_segment_area]
        a, b = res["fp32"], res["bf16"]
        kept.append(matched(a, b, 0.9))
        added.append(1.0 - matched(b, a, 0.9) if len(b) else 0.0)
        if len(a) and len(b):
            miou.extend(iou_matrix(a, b).max(axis=1).tolist())
        elif len(a):
            miou.extend([0.0] * len(a))
        crops.extend((scene.image, m) for m in a)

    def mean(xs):
        return round(sum(xs) / max(1, len(xs)), 4)

    r = {"model": model, "scenes": kind, "n": args.n, "segments_fp32": sum(1 for _ in crops)}
    r["kept"], r["kept_min"], r["added"], r["miou"] = mean(kept), round(min(kept), 3), mean(added), mean(miou)
    for prec in times:
        r[f"{prec}_encoder_s"] = mean([t[0] for t in times[prec]])
        r[f"{prec}_s"] = mean([t[1] for t in times[prec]])
    return r, crops


def clip_agreement(crops, clip: str) -> dict:
    import numpy as np

    from segsearch.crops import cut_crop
    from segsearch.eval.shapes import CLASSES
    from segsearch.runtime import load_clip
    from segsearch.settings import Settings

    def box(m):
        ys, xs = np.nonzero(m)
        return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))

    images = [cut_crop(img, m, box(m)) for img, m in crops]
    vecs, texts = {}, [f"a {c} {s}" for c, s in CLASSES]
    for prec in ("fp32", "bf16"):
        import tempfile

        emb = load_clip(Settings(clip=clip, offline=True, clip_precision=prec, data=Path(tempfile.mkdtemp())))
        t = time.perf_counter()
        vecs[prec] = emb.embed_images(images)
        vecs[prec + "_s"] = (time.perf_counter() - t) / max(1, len(images))
        vecs[prec + "_label"] = (vecs[prec] @ emb.embed_texts(texts).T).argmax(1)
    cos = (vecs["fp32"] * vecs["bf16"]).sum(1)
    return {
        "clip": clip,
        "crops": len(images),
        "cos_min": round(float(cos.min()), 5) if len(cos) else None,
        "cos_mean": round(float(cos.mean()), 5) if len(cos) else None,
        "nearest_label_changed": round(float(np.mean(vecs["fp32_label"] != vecs["bf16_label"])), 4),
        "fp32_ms_per_crop": round(1000 * vecs["fp32_s"], 2),
        "bf16_ms_per_crop": round(1000 * vecs["bf16_s"], 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam-shapes-tiny,sam2-shapes-tiny")
    ap.add_argument("--clip", default="clip-shapes-tiny")
    ap.add_argument("--scenes", default="plain,nested,small,small-nested,4mp")
    ap.add_argument("--n", type=int, default=10, help="held-out scenes per kind")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from segsearch.models.sam import native_bf16

    print(f"# this CPU multiplies bf16 in hardware: {native_bf16()}", file=sys.stderr)
    crops = []
    for model in args.model.split(","):
        for kind in args.scenes.split(","):
            r, c = run(model, kind, args)
            crops += c
            print(json.dumps(r) if args.json else _line(r), flush=True)
    r = clip_agreement(crops, args.clip)
    print(json.dumps(r) if args.json else f"CLIP {r}", flush=True)
    return 0


def _line(r: dict) -> str:
    return (
        f"{r['model']:<17} {r['scenes']:<13} segments {r['segments_fp32']:>4}: kept {r['kept']:.4f} "
        f"(min {r['kept_min']:.3f}), added {r['added']:.4f}, matched mIoU {r['miou']:.4f}; encoder "
        f"{r['fp32_encoder_s']:.3f} -> {r['bf16_encoder_s']:.3f} s, generator {r['fp32_s']:.3f} -> {r['bf16_s']:.3f} s"
    )


if __name__ == "__main__":
    raise SystemExit(main())
