"""Quality harness: mask recall and text-retrieval precision/recall, per crop mode.

    python bench/quality.py                        # bundled shapes models, 60 held-out scenes
    python bench/quality.py --scenes 200 --json
    python bench/quality.py --sam sam-shapes-tiny,sam2-shapes-tiny   # both SAM families, side by side
    python bench/quality.py --split validation --pred-iou-thresh 0.5   # tune on scenes the report never uses
    python bench/quality.py --scene                # scene queries (AND, each predicate) and concepts
    python bench/quality.py --scene --masks ground-truth   # the same without SAM's misses
    python bench/quality.py --video                # object tracks in 20 held-out shapes-world clips
    python bench/quality.py --video --track-vector mean,best   # which track vector retrieves better
    python bench/quality.py --video --video-tracking link,propagate --sam sam-shapes-tiny,sam2-shapes-tiny
    python bench/quality.py --coco-images val2017/ --coco-annotations instances_val2017.json \
        --sam sam-vit-b --clip clip-vit-b-32 --limit 200     # real photos, category names as queries

Prints figures (or one JSON object with --json: mask_recall, mean_best_iou, precision_at_5,
recall_at_10, by_crop_mode, ...). Definitions: segsearch/quality.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def scene_main(args) -> int:
    from segsearch.eval.quality import shapes_eval_set
    from segsearch.eval.scenes import format_scene_report, scene_report
    from segsearch.settings import Settings

    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        eval_set = shapes_eval_set(Path(tmp) / "scenes", args.scenes, split=args.split, nested=args.nested)
        for masks in args.masks.split(","):
            s = Settings(
                data=Path(tmp) / masks,
                sam=(args.sam or "sam-shapes-tiny"),
                clip=args.clip or "clip-shapes-tiny",
                **({"device": args.device} if args.device else {}),
            )
            reports.append(scene_report(eval_set, s, masks=masks))
            if not args.json:
                print(format_scene_report(reports[-1]), flush=True)
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else {"by_masks": reports}))
    return 0


def video_main(args) -> int:
    from segsearch.eval.video_quality import video_eval_set, video_quality
    from segsearch.settings import Settings

    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        videos = video_eval_set(Path(tmp) / "videos", args.videos, split=args.split, duration_s=args.video_seconds)
        runs = [
            (sam, tracking, how, refresh)
            for sam in (args.sam or "sam-shapes-tiny").split(",")
            for tracking in args.video_tracking.split(",")
            for how in args.track_vector.split(",")
            for refresh in (args.video_refresh_seconds or "").split(",")
        ]
        for sam, tracking, how, refresh in runs:
            extra = {"video_refresh_seconds": float(refresh)} if refresh else {}
            s = Settings(
                data=Path(tmp) / f"data-{sam}-{tracking}-{how}-{refresh}",
                **extra,
                sam=sam,
                clip=args.clip or "clip-shapes-tiny",
                track_vector=how,
                video_tracking=tracking,
                **({"device": args.device} if args.device else {}),
            )
            reports[f"{sam} {tracking} {how}" + (f" refresh {refresh} s" if refresh else "")] = video_quality(videos, s)
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else next(iter(reports.values()))))
        return 0
    keys = ["track_recall", "mean_temporal_iou", "precision_at_5", "recall_at_10"]
    print(f"{args.videos} clips of {args.video_seconds:g} s ({args.split}), video fps {Settings().video_fps}")
    print("SAM, tracking, track vector".ljust(40) + "".join(k.rjust(20) for k in keys) + "   tracks (truth / found)")
    for how, r in reports.items():
        print(
            how.ljust(40)
            + "".join(f"{r[k]:20.3f}" for k in keys)
            + f"   {r['ground_truth_tracks']} / {r['predicted_tracks']}  ({r['seconds']:.0f} s)"
        )
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=60, help="held-out shapes-world scenes")
    ap.add_argument(
        "--split",
        default="heldout",
        choices=["heldout", "validation"],
        help="shapes scenes to use: held-out (reported figures) or validation (for tuning settings)",
    )
    ap.add_argument("--coco-images", type=Path, help="COCO-format image folder")
    ap.add_argument("--coco-annotations", type=Path, help="COCO instances JSON")
    ap.add_argument("--limit", type=int, help="at most this many COCO images")
    ap.add_argument(
        "--sam",
        default=None,
        help="SAM model, or several comma-separated (reported side by side on the same scenes); "
        "default: sam-shapes-tiny, or the settings' for COCO",
    )
    ap.add_argument("--clip", default=None, help="CLIP model (default: clip-shapes-tiny, or settings for COCO)")
    ap.add_argument("--crop-mode", default="masked", choices=["masked", "box", "blur"])
    ap.add_argument("--points-per-side", type=int, default=None)
    ap.add_argument("--pred-iou-thresh", type=float, default=None)
    ap.add_argument("--stability-score-thresh", type=float, default=None)
    ap.add_argument("--crop-n-layers", type=int, default=None, help="AMG crop layers (1: also zoomed crops)")
    ap.add_argument(
        "--min-mask-region-area",
        type=int,
        default=None,
        help="AMG clean-up: remove islands and fill holes smaller than this many pixels",
    )
    ap.add_argument("--device", default=None)
    ap.add_argument("--scene", action="store_true", help="scene queries and concepts (segsearch/eval/scenes.py)")
    ap.add_argument("--masks", default="sam", help="with --scene: sam, ground-truth or both (comma-separated)")
    ap.add_argument("--nested", type=float, default=0.5, help="with --scene: share of scenes with a shape in another")
    ap.add_argument("--video", action="store_true", help="object tracks in shapes-world videos")
    ap.add_argument("--videos", type=int, default=20, help="with --video: held-out clips (8 s each)")
    ap.add_argument("--video-seconds", type=float, default=8.0, help="with --video: each clip's length")
    ap.add_argument(
        "--video-refresh-seconds", default=None, help="with --video: propagation's refresh period(s), comma-separated"
    )
    ap.add_argument("--track-vector", default="mean", help="with --video: mean, best or both (comma-separated)")
    ap.add_argument(
        "--video-tracking", default="propagate", help="with --video: link, propagate or both (comma-separated)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.scene:
        return scene_main(args)
    if args.video:
        return video_main(args)

    from segsearch.eval.quality import coco_eval_set, evaluate, format_report, shapes_eval_set
    from segsearch.settings import Settings

    sams = args.sam.split(",") if args.sam else [None]
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.coco_images:
            eval_set = coco_eval_set(args.coco_images, args.coco_annotations, args.limit)
        else:
            eval_set = shapes_eval_set(Path(tmp) / "scenes", args.scenes, split=args.split)
        for i, sam in enumerate(sams):
            overrides = {"crop_mode": args.crop_mode}
            if args.device:
                overrides["device"] = args.device
            if args.coco_images:
                overrides.update({k: v for k, v in {"sam": sam, "clip": args.clip}.items() if v})
            else:
                # each bundled SAM runs with its own tuned generator settings (its registry defaults)
                overrides.update({"sam": sam or "sam-shapes-tiny", "clip": args.clip or "clip-shapes-tiny"})
            for key in (
                "points_per_side",
                "pred_iou_thresh",
                "stability_score_thresh",
                "crop_n_layers",
                "min_mask_region_area",
            ):
                if getattr(args, key) is not None:
                    overrides[key] = getattr(args, key)
            settings = Settings(data=Path(tmp) / f"data{i}", **overrides)
            (Path(tmp) / f"work{i}").mkdir()
            reports[settings.sam] = evaluate(eval_set, settings, workdir=Path(tmp) / f"work{i}")
    if len(reports) == 1:
        report = next(iter(reports.values()))
        print(json.dumps(report) if args.json else format_report(report))
        return 0
    if args.json:
        print(json.dumps({"by_sam": reports}))
        return 0
    for name, report in reports.items():
        print(f"== {name}")
        print(format_report(report))
    keys = ["mask_recall", "mean_best_iou", "precision_at_5", "recall_at_10", "seconds"]
    print("\n" + "model".ljust(22) + "".join(k.rjust(16) for k in keys))
    for name, r in reports.items():
        print(name.ljust(22) + "".join(f"{r.get(k, float('nan')):16.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
