"""End-to-end indexing throughput, per-stage time and peak memory on generated scenes.

    python bench/index.py                          # 100 shapes-world scenes on one core, then on all
    python bench/index.py --scenes 100,1000 --json # peak RSS must not grow with the library
    python bench/index.py --threads 2              # only all (2) threads, the default settings
    python bench/index.py --sam-processes 2        # and all cores with SAM in 2 worker processes
    python bench/index.py --amg reference --scenes 20
    python bench/index.py --video 1,5,20 --json    # one shapes-world video of each length (minutes)
    python bench/index.py --video 1 --video-tracking link,propagate --sam sam2-shapes-tiny

Each size runs in a fresh process (so its peak memory is its own) on a fresh data directory with
the embedded stores, first pinned to one core (one PyTorch thread, no SAM processes), then with
the default settings on every core, and reports the gain from the other cores within the one
invocation: images/s (and without the one-off model load), segments/s, seconds per stage
(read+hash and decode are summed over reader threads and overlap the model stages; with SAM
processes the SAM and crop stages are summed over them), peak RSS of the indexing process, and
peak memory of it together with its SAM processes (sum of PSS, so the SAM weights they share
count once), sampled along the run. With --video: seconds per video-minute at the default
--video-fps, tracks found, and peak RSS per length (it must stay flat: frames are streamed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    """Current resident set size (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def tree_pss_mb() -> float:
    """Proportional set size of this process and every process it started (SAM processes), MiB."""
    import os

    from treemem import descendants, memory_kib  # bench/, this script's folder

    return sum(memory_kib(p)[0] for p in descendants(os.getpid())) / 1024


def run_one(files: list[Path], data: Path, amg: str, threads: int | None) -> dict:
    import resource
    import threading

    import torch

    from segsearch import Library
    from segsearch.eval.shapes import SHAPES_AMG
    from segsearch.settings import Settings

    if threads == 1:  # one core: pinned, one PyTorch thread (and SAM in this process)
        import os

        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if threads:
        torch.set_num_threads(threads)
    import os

    sam = os.environ.get("BENCH_SAM", "sam-shapes-tiny")  # --sam; the tiny SAM 1 at the shapes settings
    extra = SHAPES_AMG if sam == "sam-shapes-tiny" else {}
    settings = Settings(data=data, sam=sam, clip="clip-shapes-tiny", amg=amg, offline=True, **extra)
    samples: list[tuple[float, float]] = []
    tree = [0.0]
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample():
        while not stop.wait(0.5):
            samples.append((round(time.perf_counter() - t0, 1), round(rss_mb(), 1)))
            tree[0] = max(tree[0], tree_pss_mb())

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    from segsearch.runtime import Models

    models = Models(settings)
    with Library(settings=settings, models=models) as library:
        summary = library.index(files).to_dict()
        tracks = library.catalog.counts()["segments"]
    stop.set()
    th.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    n = len(samples)
    if files[0].suffix == ".mp4":
        from segsearch.video import probe

        minutes = probe(files[0]).duration_s / 60
        return {
            "video_minutes": round(minutes, 2),
            "indexed": summary["indexed"],
            "failed": summary["failed"],
            "segments": tracks,
            "seconds": round(summary["seconds"], 1),
            "seconds_per_video_minute": round(summary["seconds"] / minutes, 1),
            "stages_s": summary["stages"],
            "peak_rss_mb": round(peak, 1),
            "rss_mb_at_10_50_100pct": [samples[min(n - 1, int(n * f))][1] for f in (0.1, 0.5, 0.99)] if n else [],
        }

    # the slowest stage measured alone: SAM on (up to 20 of) the same images, nothing else running
    from segsearch.images import decode_image

    from segsearch.indexer.amg import mask_generator_for

    sample_imgs = [decode_image(p.read_bytes()).rgb for p in files[:20]]
    t = time.perf_counter()
    for im in sample_imgs:
        mask_generator_for(models).generate(im)
    sam_alone = (time.perf_counter() - t) / len(sample_imgs)
    secs = summary["seconds"]
    st = summary["stages"]
    steady = secs - st.get("load_models", 0.0) - st.get("optimize", 0.0)
    return {
        "scenes": len(files),
        "amg": amg,
        "indexed": summary["indexed"],
        "failed": summary["failed"],
        "segments": summary["segments"],
        "seconds": round(secs, 2),
        "images_per_s": round(summary["indexed"] / secs, 3),
        "segments_per_s": round(summary["segments"] / secs, 2),
        "stages_s": summary["stages"],
        "steady_images_per_s": round(summary["indexed"] / steady, 3) if steady > 0 else None,
        "peak_rss_mb": round(peak, 1),
        "peak_pss_with_sam_processes_mb": round(tree[0], 1),
        "threads": torch.get_num_threads(),
        "sam_processes": settings.sam_processes,
        # throughput relative to the slowest stage (SAM) alone, excluding one-off model load and index build
        "sam_alone_images_per_s": round(1 / sam_alone, 3),
        "efficiency_vs_sam_alone": round(summary["indexed"] / steady * sam_alone, 3) if steady > 0 else None,
        "rss_mb_at_10_50_100pct": [samples[min(n - 1, int(n * f))][1] for f in (0.1, 0.5, 0.99)] if n else [],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default="100", help="comma-separated library sizes, e.g. 100,1000")
    ap.add_argument("--amg", default="fast", choices=["fast", "reference"])
    ap.add_argument(
        "--threads", type=int, default=None, help="only this many threads (1: one core); default: one core, then all"
    )
    ap.add_argument("--workdir", type=Path, default=None, help="where scenes and stores go (default: a temp dir)")
    ap.add_argument("--video", default=None, help="comma-separated video lengths in minutes, e.g. 1,5,20")
    ap.add_argument(
        "--video-tracking", default="propagate", help="with --video: link, propagate or both (comma-separated)"
    )
    ap.add_argument("--sam", default="sam-shapes-tiny", help="with --video: the SAM (default sam-shapes-tiny)")
    ap.add_argument(
        "--sam-processes", type=int, default=0, help="also run all cores with SAM in this many worker processes"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("FILES_TXT", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        files = [Path(p) for p in Path(args.child[0]).read_text().split("\n") if p]
        print(json.dumps(run_one(files, Path(args.child[1]), args.amg, args.threads)))
        return 0

    from PIL import Image

    from segsearch.eval.shapes import DEMO_SEEDS, make_scene

    work = args.workdir or Path(tempfile.mkdtemp(prefix="segsearch-bench-index-"))
    if args.video:
        return video_main(args, work)
    sizes = [int(v) for v in args.scenes.split(",")]
    scenes = work / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(max(sizes)):
        p = scenes / f"scene-{k:06d}.png"
        if not p.exists():
            Image.fromarray(make_scene(DEMO_SEEDS[k]).image).save(p)
        files.append(p)

    results, gains = [], []
    setups = [(args.threads, None)] if args.threads else [(1, None), (None, None)]
    if args.sam_processes:  # and all cores with SAM in worker processes
        setups.append((args.threads, args.sam_processes))
    for n in sizes:
        by = {}
        for threads, procs in setups:
            r = child(files[:n], work / f"data-{n}-{args.amg}-{time.time_ns()}", args, threads, procs)
            results.append(r)
            by[(threads, procs)] = r
            if not args.json:
                label = "1 core" if threads == 1 else f"{r['threads']} threads"
                label += f", {procs} SAM processes" if procs else ""
                print(
                    f"{r['scenes']:6d} scenes  {label:>10}  "
                    f"{r['images_per_s']:.2f} img/s ({r['steady_images_per_s']:.2f} without model load)  "
                    f"{r['segments_per_s']:.1f} seg/s  peak RSS {r['peak_rss_mb']:.0f} MiB "
                    f"(with SAM processes {r['peak_pss_with_sam_processes_mb']:.0f})  "
                    f"efficiency vs SAM alone {r['efficiency_vs_sam_alone']}  stages {r['stages_s']}",
                    flush=True,
                )
        one = by.get((1, None))
        for (threads, procs), every in by.items() if one else []:
            if threads == 1:
                continue
            gains.append(
                {
                    "scenes": n,
                    "sam_processes": procs or 0,
                    "images_per_s": round(every["images_per_s"] / one["images_per_s"], 3),
                    "steady_images_per_s": round(every["steady_images_per_s"] / one["steady_images_per_s"], 3),
                }
            )
            if not args.json:
                print(f"{n:6d} scenes  gain from every core vs one: {gains[-1]}", flush=True)
    report = {"runs": results}
    if gains:
        report["gain_all_cores_vs_one"] = gains
    if len(sizes) > 1:
        last = [r for r in results if r["scenes"] == sizes[-1]][-1]
        first = [r for r in results if r["scenes"] == sizes[0]][-1]
        report["peak_rss_ratio_largest_vs_smallest"] = round(last["peak_rss_mb"] / first["peak_rss_mb"], 3)
    if args.json:
        print(json.dumps(report))
    elif "peak_rss_ratio_largest_vs_smallest" in report:
        print(f"peak RSS ratio {sizes[-1]} vs {sizes[0]} scenes: {report['peak_rss_ratio_largest_vs_smallest']}")
    return 0


def child(
    files: list[Path],
    data: Path,
    args,
    threads: int | None = None,
    procs: int | None = None,
    tracking: str | None = None,
) -> dict:
    import os

    lst = data.parent / (data.name + ".txt")
    lst.write_text("\n".join(str(p) for p in files))
    cmd = [sys.executable, __file__, "--child", str(lst), str(data), "--amg", args.amg]
    threads = threads or args.threads
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "SEGSEARCH_SAM_PROCESSES": str(procs or 0), "BENCH_SAM": args.sam}
    if tracking:
        env["SEGSEARCH_VIDEO_TRACKING"] = tracking
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def video_main(args, work: Path) -> int:
    """One video per length, each indexed in its own process (its peak RSS its own)."""
    from segsearch.eval.videos import VIDEO_HELDOUT_SEEDS, make_video, write_mp4

    results = []
    work.mkdir(parents=True, exist_ok=True)
    for minutes, tracking in [
        (float(v), mode) for v in args.video.split(",") for mode in args.video_tracking.split(",")
    ]:
        path = work / f"video-{minutes:g}min.mp4"
        if not path.exists():
            write_mp4(make_video(VIDEO_HELDOUT_SEEDS[0], duration_s=60 * minutes), path)
        r = child([path], work / f"data-video-{minutes:g}-{time.time_ns()}", args, tracking=tracking)
        r["video_tracking"], r["sam"] = tracking, args.sam
        results.append(r)
        if not args.json:
            print(
                f"{args.sam} {tracking:9s} {r['video_minutes']:5.1f} min  "
                f"{r['seconds_per_video_minute']:.1f} s per video-minute  "
                f"{r['segments']} tracks+keyframes  peak RSS {r['peak_rss_mb']:.0f} MiB  RSS along the run "
                f"{r['rss_mb_at_10_50_100pct']}  stages {r['stages_s']}",
                flush=True,
            )
    report = {"videos": results}
    modes = args.video_tracking.split(",")
    lengths = sorted({r["video_minutes"] for r in results})
    if len(lengths) > 1:  # per tracking mode: the longest video's peak over the shortest's
        report["peak_rss_ratio_longest_vs_shortest"] = {
            m: round(
                [r for r in results if r["video_tracking"] == m][-1]["peak_rss_mb"]
                / [r for r in results if r["video_tracking"] == m][0]["peak_rss_mb"],
                3,
            )
            for m in modes
        }
    if len(modes) > 1:  # the cost of each mode against the first, per length
        report["cost_vs_" + modes[0]] = {
            f"{r['video_minutes']:g} min {r['video_tracking']}": round(
                r["seconds_per_video_minute"]
                / next(
                    b["seconds_per_video_minute"]
                    for b in results
                    if b["video_minutes"] == r["video_minutes"] and b["video_tracking"] == modes[0]
                ),
                3,
            )
            for r in results
        }
    print(
        json.dumps(report)
        if args.json
        else f"peak RSS ratio longest vs shortest: {report.get('peak_rss_ratio_longest_vs_shortest')}; "
        f"cost vs {modes[0]}: {report.get('cost_vs_' + modes[0])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
