"""Mask-generation speed: the reference engine (official SamAutomaticMaskGenerator) vs the fast
engine on the same images, model and settings, in one run, plus how well their masks agree.

    python bench/amg.py                              # bundled sam-shapes-tiny, 10 held-out scenes,
                                                     # SAM's default parameters, 1 thread and all cores
    python bench/amg.py --params shapes              # the shapes demo's parameters (16x16, stability 0.6)
    python bench/amg.py --params my.json             # any parameters (JSON object of generator kwargs)
    python bench/amg.py --model sam-vit-b --images 1 # real-size ViT-B, random weights (timing only)
    python bench/amg.py --device cuda --json

Prints reference_s_per_image, fast_s_per_image, speedup, matched_miou (mean over reference masks
of the best IoU with a fast mask), count_ratio (fast masks / reference masks) and the fast
engine's per-stage seconds. Registered models without weights (sam-vit-b/l/h are downloaded
only when present) are built with random weights when --random-weights is given or the
checkpoint is missing: fine for timing; with random weights the predicted-IoU filter removes
nearly every mask, so agreement figures are only meaningful for trained weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def amg_params(name: str) -> dict:
    from segsearch.eval.shapes import SHAPES_AMG
    from segsearch.settings import Settings

    if name == "defaults":  # the class defaults, not whatever this shell's SEGSEARCH_* say
        return {k: Settings.model_fields[k].default for k in Settings().given_amg_params()}
    if name == "shapes":
        return dict(SHAPES_AMG)
    return json.loads(Path(name).read_text())


def size_sweep(args) -> int:
    """Each size in a fresh process (its peak RSS is its own): the fast engine on one 4:3 scene."""
    import subprocess

    if args.child_size is not None:
        import resource

        import torch

        from segsearch.eval.shapes import HELDOUT_SEEDS, make_scene
        from segsearch.runtime import load_sam
        from segsearch.settings import Settings

        from segsearch.indexer.amg import make_mask_generator

        w = int(round((args.child_size * 1e6 * 4 / 3) ** 0.5))
        h = int(round(w * 3 / 4))
        sam = load_sam(Settings(sam=args.model, device=args.device, offline=True))
        gen = make_mask_generator("fast", sam, **amg_params(args.params))
        img = make_scene(HELDOUT_SEEDS[0], width=w, height=h).image
        gen.generate(img[:64, :64].copy())  # warm-up
        t = time.perf_counter()
        masks = gen.generate(img)
        secs = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            json.dumps(
                {
                    "megapixels": args.child_size,
                    "size": f"{w}x{h}",
                    "s_per_image": round(secs, 3),
                    "stages_s": {k: round(v, 3) for k, v in gen.timings.items()},
                    "masks": len(masks),
                    "peak_rss_mb": round(peak, 1),
                    "threads": torch.get_num_threads(),
                }
            )
        )
        return 0
    runs = []
    for mp in [float(v) for v in args.sizes.split(",")]:
        cmd = [
            sys.executable,
            __file__,
            "--sizes",
            args.sizes,
            "--child-size",
            str(mp),
            "--model",
            args.model,
            "--params",
            args.params,
            "--device",
            args.device,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if not args.json:
            r = runs[-1]
            print(
                f"{r['megapixels']:5.1f} MP {r['size']:>11s}  {r['s_per_image']:7.2f} s  "
                f"peak RSS {r['peak_rss_mb']:7.0f} MiB  masks {r['masks']}  {r['stages_s']}",
                flush=True,
            )
    report = {"model": args.model, "params_name": args.params, "runs": runs}
    base = next((r for r in runs if r["megapixels"] == 4), None)
    if base:
        report["time_vs_4mp"] = {str(r["megapixels"]): round(r["s_per_image"] / base["s_per_image"], 2) for r in runs}
    if args.json:
        print(json.dumps(report))
    elif base:
        print("time vs 4 MP:", report["time_vs_4mp"])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="sam-shapes-tiny",
        help="registered SAM name, or several comma-separated (e.g. sam-shapes-tiny,sam2-shapes-tiny: side by side)",
    )
    ap.add_argument("--images", type=int, default=10, help="held-out shapes-world scenes to run")
    ap.add_argument("--size", default=None, help="WxH: render every scene at this size (e.g. 1024x768)")
    ap.add_argument(
        "--params",
        default="defaults",
        help="defaults (the generator's own: 32x32, SAM 1 IoU 0.88 / SAM 2 0.8, stability 0.95) | model (each "
        "model's registry settings: what `segsearch index` runs with no flags) | shapes | FILE.json",
    )
    ap.add_argument("--points-per-side", type=int, default=None)
    ap.add_argument("--min-mask-region-area", type=int, default=None, help="small-region clean-up (px)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads",
        default="1,all",
        help="comma-separated torch CPU thread counts, each timed in this run ('all' = every core)",
    )
    ap.add_argument("--random-weights", action="store_true", help="do not load a checkpoint")
    ap.add_argument("--skip-reference", action="store_true", help="time the fast engine only")
    ap.add_argument(
        "--sizes",
        default=None,
        help="photo-size sweep instead: comma-separated megapixels (e.g. 1,4,12,24,48), 4:3 scenes; "
        "fast engine, all cores, each size in its own process (s/image and peak RSS)",
    )
    ap.add_argument("--child-size", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.sizes:
        return size_sweep(args)
    results = [_bench(args, name) for name in args.model.split(",")]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else {"by_model": results}))
        return 0
    for result in results:
        runs = result["runs"]
        for k, v in result.items():
            if k != "runs":
                print(f"{k:24s} {v}")
        for r in runs:
            print(f"-- {r['threads']} thread(s)")
            for k, v in r.items():
                print(f"   {k:24s} {v}")
    if len(results) > 1:  # side by side: seconds per image of each engine, per thread count
        print("\nmodel".ljust(24) + "threads  reference s  fast s  speedup  masks")
        for result in results:
            for r in result["runs"]:
                print(
                    f"{result['model']:23s} {r['threads']:7d} {r.get('reference_s_per_image', float('nan')):12.3f} "
                    f"{r['fast_s_per_image']:7.3f} {r.get('speedup', float('nan')):8.2f} {r['fast_masks']:6d}"
                )
    return 0


def _bench(args, model: str) -> dict:
    """Both engines on the scenes with one model, at each thread count."""
    import numpy as np
    import torch

    from segsearch.eval.quality import iou_matrix
    from segsearch.eval.shapes import HELDOUT_SEEDS, make_scene
    from segsearch.models.registry import get_sam_spec
    from segsearch.models.weights import WeightsUnavailable
    from segsearch.runtime import load_sam
    from segsearch.settings import Settings

    from segsearch.indexer.amg import make_mask_generator

    all_cores = torch.get_num_threads()
    threads = [all_cores if t == "all" else int(t) for t in args.threads.split(",")]
    if args.device.startswith("cuda"):
        threads = [all_cores]  # the GPU does the work: one CPU setting is enough
    threads = list(dict.fromkeys(threads))
    spec = get_sam_spec(model)
    settings = Settings()
    weights, sam = "random", None
    if not args.random_weights and spec.weights is not None:
        try:  # bundled (package data) or downloaded weights, wherever the product would find them
            sam = load_sam(settings.model_copy(update={"sam": model, "device": args.device, "offline": True}))
            weights = spec.weights.filename
        except WeightsUnavailable:
            pass
    if sam is None:  # the same architecture, random init (either family)
        import dataclasses

        from segsearch.models.sam import load_sam as load_spec

        sam = load_spec(dataclasses.replace(spec, weights=None), Path("unused"), device=args.device)
    if args.params == "model":  # the model's own generator settings (what `segsearch index` runs)
        from segsearch.models.registry import amg_defaults

        params = dict(amg_defaults(spec))
    else:
        params = amg_params(args.params)
    if args.points_per_side:
        params["points_per_side"] = args.points_per_side
    if args.min_mask_region_area is not None:
        params["min_mask_region_area"] = args.min_mask_region_area
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else (None, None)
    images = [make_scene(s, width=size[0], height=size[1]).image for s in HELDOUT_SEEDS[: args.images]]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(engine):
        gen = make_mask_generator(engine, sam, **params)
        gen.generate(images[0][:64, :64].copy())  # warm-up (allocator, kernels), not timed
        out, secs, stages = [], 0.0, {}
        for im in images:
            sync()
            t = time.perf_counter()
            out.append(gen.generate(im))
            sync()
            secs += time.perf_counter() - t
            for k, v in getattr(gen, "timings", {}).items():
                stages[k] = stages.get(k, 0.0) + v
        return out, secs / len(images), {k: v / len(images) for k, v in stages.items()}

    def one(n_threads: int) -> dict:
        torch.set_num_threads(n_threads)
        fast, fast_s, stages = timed("fast")
        r = {
            "threads": n_threads,
            "fast_s_per_image": round(fast_s, 4),
            "fast_stages_s_per_image": {k: round(v, 4) for k, v in stages.items()},
            "fast_masks": sum(len(m) for m in fast),
        }
        if args.skip_reference:
            return r
        ref, ref_s, _ = timed("reference")
        best = []
        for a, b in zip(ref, fast):
            if len(a):
                best.extend(iou_matrix(a.masks, b.masks).max(1) if len(b) else np.zeros(len(a)))
        n_ref = sum(len(m) for m in ref)
        r.update(
            {
                "reference_s_per_image": round(ref_s, 4),
                "speedup": round(ref_s / fast_s, 2),
                "reference_masks": n_ref,
                "matched_miou": round(float(np.mean(best)), 4) if best else None,
                "count_ratio": round(r["fast_masks"] / n_ref, 4) if n_ref else None,
            }
        )
        return r

    runs = [one(t) for t in threads]
    result = {
        "model": model,
        "weights": weights,
        "device": args.device,
        "params_name": args.params,
        "images": len(images),
        "image_sizes": sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images}),
        "params": params,
        "runs": runs,
    }
    if len(runs) > 1:
        result["fast_thread_scaling"] = round(runs[0]["fast_s_per_image"] / runs[-1]["fast_s_per_image"], 2)
    return result


if __name__ == "__main__":
    sys.exit(main())
