"""Prompt selection: which grid prompts to decode (indexer/prompts.py), against the full grid.

    python bench/prompts.py                          # bundled SAMs, held-out scenes of every kind
    python bench/prompts.py --split validation --similarity 0.85,0.9,0.95   # choosing the threshold
    python bench/prompts.py --model sam-shapes-tiny --points 32 --scenes small --n 10

For each model, scene kind and setting it runs the fast engine twice on the same scenes, once on
the full grid and once coarse to fine, and prints: prompts decoded per image, decoder seconds per
image, masks per image, and ``kept``: the fraction of the full grid's masks that the selection also
returns (a mask with IoU >= 0.9; over the masks that become segments, at least
``min_segment_area`` pixels), plus ``recall_grid`` / ``recall_adaptive``: the fraction of the
ground-truth shapes matched (IoU >= 0.5) by each. Scene kinds (each a shapes-world split):

* ``plain``: the shapes scenes (1-6 shapes of 15-38% of the side);
* ``nested``: the same with a small shape inside the largest one (chance 1);
* ``small``: 1024 x 768, 18 small shapes (24-40 px) beside 2 large ones;
* ``small-nested``: the same with the large one holding a nested shape;
* ``4mp``: a shapes scene at 2304 x 1728.
"""

from __future__ import annotations

import argparse
import json
import time


def scenes(kind: str, split: str, n: int):
    from segsearch.eval.shapes import HELDOUT_SEEDS, VALIDATION_SEEDS, make_scene, make_small_scene

    seeds = (HELDOUT_SEEDS if split == "heldout" else VALIDATION_SEEDS)[500 : 500 + n]
    for seed in seeds:
        if kind == "plain":
            yield make_scene(seed)
        elif kind == "nested":
            yield make_scene(seed, nested=1.0)
        elif kind == "small":
            yield make_small_scene(seed)
        elif kind == "small-nested":
            yield make_small_scene(seed, nested=1.0)
        elif kind == "4mp":
            yield make_scene(seed, width=2304, height=1728)
        else:
            raise SystemExit(f"unknown scene kind {kind!r}")


def matched(a, b, thr: float) -> float:
    """Fraction of masks in ``a`` with a mask in ``b`` of IoU >= thr."""
    from segsearch.eval.quality import iou_matrix

    if len(a) == 0:
        return 1.0
    if len(b) == 0:
        return 0.0
    return float((iou_matrix(a, b).max(axis=1) >= thr).mean())


def run(model: str, kind: str, args, similarity: float, points: int | None) -> dict:
    from segsearch.models import amg_params
    from segsearch.runtime import load_sam
    from segsearch.settings import Settings

    from segsearch.indexer.amg import make_mask_generator

    settings = Settings(sam=model, offline=True, points_per_side=points)
    if model not in _sams:
        _sams[model] = load_sam(settings)
    sam = _sams[model]
    params = {k: v for k, v in amg_params(settings).items() if k != "prompts"}
    grid = make_mask_generator("fast", sam, **params, prompts="grid")
    adaptive = make_mask_generator("fast", sam, **params, prompts="adaptive", prompt_similarity=similarity)
    rows = {"grid": [], "adaptive": []}
    kept, rec_g, rec_a = [], [], []
    for scene in scenes(kind, args.split, args.n):
        out = {}
        for name, gen in (("grid", grid), ("adaptive", adaptive)):
            t = time.perf_counter()
            ms = gen.generate(scene.image)
            rows[name].append((gen.prompts_decoded, gen.timings["decoder"], len(ms), time.perf_counter() - t))
            out[name] = ms.masks
        # masks that become segments: the indexer skips those under min_segment_area (the
        # small-region clean-up leaves some grid masks empty or a few pixels)
        real = out["grid"][out["grid"].reshape(len(out["grid"]), -1).sum(1) >= settings.min_segment_area]
        kept.append(matched(real, out["adaptive"], 0.9))
        rec_g.append(matched(scene.masks, out["grid"], 0.5))
        rec_a.append(matched(scene.masks, out["adaptive"], 0.5))

    def mean(xs):
        return round(sum(xs) / max(1, len(xs)), 4)

    r = {"model": model, "scenes": kind, "points": params["points_per_side"], "similarity": similarity}
    for name in rows:
        r[f"{name}_prompts"] = mean([x[0] for x in rows[name]])
        r[f"{name}_decoder_s"] = mean([x[1] for x in rows[name]])
        r[f"{name}_s"] = mean([x[3] for x in rows[name]])
        r[f"{name}_masks"] = mean([x[2] for x in rows[name]])
    r["kept"] = mean(kept)
    r["kept_min"] = round(min(kept), 3)
    r["recall_grid"], r["recall_adaptive"] = mean(rec_g), mean(rec_a)
    r["decoder_speedup"] = round(r["grid_decoder_s"] / max(r["adaptive_decoder_s"], 1e-9), 2)
    return r


_sams: dict = {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam-shapes-tiny,sam2-shapes-tiny")
    ap.add_argument("--scenes", default="plain,nested,small,small-nested,4mp")
    ap.add_argument("--split", choices=("heldout", "validation"), default="heldout")
    ap.add_argument("--n", type=int, default=10, help="scenes per kind")
    ap.add_argument("--points", default="model", help="grid sides, comma-separated; 'model': the model's own")
    ap.add_argument("--similarity", default=None, help="thresholds to try, comma-separated (default: the product's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from segsearch.indexer.prompts import SIMILARITY

    if args.threads:
        torch.set_num_threads(args.threads)
    sims = [float(x) for x in args.similarity.split(",")] if args.similarity else [SIMILARITY]
    points = [None if p == "model" else int(p) for p in args.points.split(",")]
    results = []
    for model in args.model.split(","):
        for kind in args.scenes.split(","):
            for p in points:
                for sim in sims:
                    r = run(model, kind, args, sim, p)
                    results.append(r)
                    print(json.dumps(r) if args.json else _line(r), flush=True)
    return 0


def _line(r: dict) -> str:
    return (
        f"{r['model']:<17} {r['scenes']:<13} {r['points']:>3}x{r['points']:<3} sim {r['similarity']:.2f}: "
        f"prompts {r['grid_prompts']:.0f} -> {r['adaptive_prompts']:.0f}, decoder {r['grid_decoder_s']:.2f} -> "
        f"{r['adaptive_decoder_s']:.2f} s ({r['decoder_speedup']}x), masks {r['grid_masks']:.1f} / "
        f"{r['adaptive_masks']:.1f}, kept {r['kept']:.3f} (min {r['kept_min']}), shape recall "
        f"{r['recall_grid']:.3f} -> {r['recall_adaptive']:.3f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
