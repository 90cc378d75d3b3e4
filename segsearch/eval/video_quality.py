"""Track quality on shapes-world videos (``bench/quality.py --video``).

Definitions:

* A ground-truth track is an object over the sampled times at which at least half of it is in view
  (``segsearch.eval.videos.VISIBLE_FRAC``); one shorter than ``min_track_seconds`` (which the
  product drops as a flicker) is left out and counted. A predicted track is matched to it when their temporal
  IoU (shared sampled times over the union of both spans' times) is >= 0.5 and their mean mask IoU
  over the shared times is >= 0.5; each predicted track matches at most one ground-truth track
  (best pairs first).
* **Track recall**: matched ground-truth tracks / all of them. **Mean temporal IoU**: over every
  ground-truth track, the best temporal IoU of a predicted track whose masks match (0 if none).
* **Retrieval**: one text query per colour+shape that occurs ("red circle"), searching tracks only.
  A hit is correct when it is matched to a ground-truth track of that label. precision@5 counts
  against min(5, correct tracks indexed), recall@10 against min(10, ground-truth tracks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segsearch.eval.videos import VIDEO_HELDOUT_SEEDS, VIDEO_VALIDATION_SEEDS, ShapesVideo, make_video, write_mp4
from segsearch.masks import decode_rle
from segsearch.settings import Settings

MATCH_TIOU = 0.5
MATCH_MIOU = 0.5


def video_eval_set(
    folder: Path, n: int, *, split: str = "heldout", duration_s: float = 8.0
) -> list[tuple[Path, ShapesVideo]]:
    seeds = VIDEO_VALIDATION_SEEDS if split == "validation" else VIDEO_HELDOUT_SEEDS
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        v = make_video(seeds[k], duration_s=duration_s)
        out.append((write_mp4(v, folder / f"video-{k:03d}.mp4").resolve(), v))
    return out


def match(truth: list[dict], predicted: list[tuple[str, dict[float, np.ndarray]]]) -> list[dict]:
    """Per ground-truth track: its best temporal IoU, and the predicted track matched to it."""
    pairs = []
    for gi, g in enumerate(truth):
        gt_times = set(g["masks"])
        for pi, (_sid, frames) in enumerate(predicted):
            common = gt_times & set(frames)
            if not common:
                continue
            tiou = len(common) / len(gt_times | set(frames))
            ious = []
            for t in common:
                a, b = g["masks"][t], frames[t]
                union = np.logical_or(a, b).sum()
                ious.append(np.logical_and(a, b).sum() / union if union else 0.0)
            pairs.append((tiou, float(np.mean(ious)), gi, pi))
    best_tiou = [0.0] * len(truth)
    for tiou, miou, gi, _pi in pairs:
        if miou >= MATCH_MIOU:
            best_tiou[gi] = max(best_tiou[gi], tiou)
    matched: dict[int, int] = {}
    used: set[int] = set()
    for tiou, miou, gi, pi in sorted(pairs, key=lambda p: p[0] * p[1], reverse=True):
        if tiou >= MATCH_TIOU and miou >= MATCH_MIOU and gi not in matched and pi not in used:
            matched[gi] = pi
            used.add(pi)
    return [
        {"label": g["label"], "tiou": best_tiou[gi], "matched": predicted[matched[gi]][0] if gi in matched else None}
        for gi, g in enumerate(truth)
    ]


def video_quality(videos: list[tuple[Path, ShapesVideo]], settings: Settings) -> dict:
    """Index the videos with ``settings`` and score tracks and text retrieval."""
    from segsearch.library import Library
    from segsearch.store.tracks import track_frames, video_segments
    from segsearch.store.vectors import SearchFilter

    step = 1.0 / settings.video_fps
    results, label_of = [], {}
    with Library(settings=settings) as library:
        summary = library.index([p for p, _ in videos])
        catalog = library.catalog
        n_tracks = short = 0
        for path, v in videos:
            known = catalog.lookup_path(str(path))
            tracks = video_segments(catalog, known[0].image_id)[0] if known else []
            n_tracks += len(tracks)
            frames = track_frames(catalog, [r.id for r in tracks])
            predicted = [(r.id, {f.t: decode_rle(f.rle) for f in frames[r.id]}) for r in tracks]
            times = [round(k * step, 3) for k in range(int(v.duration_s / step + 1e-6))]
            truth = v.truth(times)
            # a ground-truth track shorter than min_track_seconds is one the product drops by design
            short += sum(g["end_s"] - g["start_s"] + step < settings.min_track_seconds - 1e-6 for g in truth)
            truth = [g for g in truth if g["end_s"] - g["start_s"] + step >= settings.min_track_seconds - 1e-6]
            res = match(truth, predicted)
            results += res
            label_of.update({r["matched"]: r["label"] for r in res if r["matched"]})
        searcher = library.searcher()
        labels = sorted({r["label"] for r in results})
        p5, r10 = [], []
        for label in labels:
            text = f"{label[0]} {label[1]}"
            hits = searcher.search_vector(searcher.text_vector(text), top_k=10, flt=SearchFilter(kind="track"))
            ok = [label_of.get(h.segment_id) == label for h in hits]
            n_gt = sum(r["label"] == label for r in results)
            n_correct = sum(lab == label for lab in label_of.values())
            if n_correct:
                p5.append(sum(ok[:5]) / min(5, n_correct))
            r10.append(sum(ok) / min(10, n_gt))
    return {
        "videos": len(videos),
        "indexed": summary.indexed,
        "failed": summary.failed,
        "ground_truth_tracks": len(results),
        "ground_truth_shorter_than_min": short,
        "predicted_tracks": n_tracks,
        "track_recall": float(np.mean([r["matched"] is not None for r in results])) if results else 0.0,
        "mean_temporal_iou": float(np.mean([r["tiou"] for r in results])) if results else 0.0,
        "precision_at_5": float(np.mean(p5)) if p5 else 0.0,
        "recall_at_10": float(np.mean(r10)) if r10 else 0.0,
        "queries": len(labels),
        "seconds": summary.seconds,
    }
