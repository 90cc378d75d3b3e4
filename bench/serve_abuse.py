"""Issue 30's starvation scenario against a real ``segsearch serve``: many clients looping the
costliest scene query and random video frames, while one other user polls ``/healthz`` and fetches
crops. Prints latency percentiles of the other user's requests, idle (no load) and under load, in
one run, and what the abusive clients got (200s, 503s with Retry-After, other statuses).

    python bench/serve_abuse.py                       # 48 scene clients + 20 frame clients, 30 s
    python bench/serve_abuse.py --scene-clients 48 --frame-clients 20 --seconds 60 --json

The library: 12 shapes-world scenes and one 60 s shapes-world video, indexed with the bundled
models (the server is the user's default: no tuning flags).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path


def build(work: Path) -> Path:
    from PIL import Image

    from segsearch import Library
    from segsearch.eval.shapes import DEMO_SEEDS, SHAPES_AMG, make_scene
    from segsearch.eval.video_quality import video_eval_set
    from segsearch.settings import Settings

    lib = work / "library"
    lib.mkdir(parents=True, exist_ok=True)
    for seed in DEMO_SEEDS[:12]:
        Image.fromarray(make_scene(seed).image).save(lib / f"scene-{seed}.png")
    video_eval_set(lib / "videos", 1, duration_s=60.0)
    settings = Settings(data=work / "data", sam="sam-shapes-tiny", clip="clip-shapes-tiny", **SHAPES_AMG)
    with Library(settings=settings) as library:
        library.index([str(lib)])
    return work / "data"


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summary(xs: list[float]) -> dict:
    return {
        "n": len(xs),
        "p50_ms": round(1000 * pct(xs, 0.5), 1) if xs else None,
        "p95_ms": round(1000 * pct(xs, 0.95), 1) if xs else None,
    }


def other_user(base: str, crops: list[str], seconds: float, results) -> None:
    """Another user of the server: /healthz and a crop, 20 times a second, for ``seconds``."""
    import httpx

    out = {"healthz": [], "crop": [], "crop_status": {}}
    end = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=60) as c:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            c.get("/healthz")
            out["healthz"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = c.get(random.choice(crops))
            out["crop"].append(time.perf_counter() - t0)
            out["crop_status"][r.status_code] = out["crop_status"].get(r.status_code, 0) + 1
            time.sleep(0.05)
    results.put(out)


SCENE = {
    "objects": [
        {"text": t}
        for t in (
            "red circle",
            "blue square",
            "green star",
            "yellow triangle",
            "red square",
            "blue circle",
            "green square",
            "yellow star",
        )
    ],
    "relations": [{"subject": i, "predicate": "left_of", "object": i + 1} for i in range(7)],
    "top_k": 20,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene-clients", type=int, default=48)
    ap.add_argument("--frame-clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import httpx

    work = args.workdir or Path(tempfile.mkdtemp(prefix="segsearch-bench-abuse-"))
    data = work / "data" if (work / "data").exists() else build(work)
    from serving import running_server  # bench/, this script's folder

    env = dict(os.environ, SEGSEARCH_DATA=str(data), SEGSEARCH_OFFLINE="1")
    with running_server(env) as (_server, base):
        with httpx.Client(base_url=base, timeout=60) as c:
            hits = c.post("/v1/search", json={"text": "red circle", "top_k": 50, "filters": {"kind": "object"}})
            crops = [h["urls"]["crop"] for h in hits.json()["hits"]]
            video = next(
                h["image_id"]
                for h in c.post("/v1/search", json={"text": "x", "top_k": 50, "filters": {"media": "video"}}).json()[
                    "hits"
                ]
            )
            duration = c.get(f"/v1/videos/{video}").json()["duration_s"]

        def abuser(kind: str, stop: threading.Event, got: dict) -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                while not stop.is_set():
                    try:
                        if kind == "scene":
                            r = c.post("/v1/search/scene", json=SCENE)
                        else:
                            r = c.get(
                                f"/v1/images/{video}/image.jpg", params={"t": round(random.uniform(0, duration), 1)}
                            )
                        key = f"{kind}:{r.status_code}" + (":retry-after" if "retry-after" in r.headers else "")
                    except httpx.HTTPError as exc:
                        key = f"{kind}:{type(exc).__name__}"
                    got[key] = got.get(key, 0) + 1

        def phase(n_scene: int, n_frame: int) -> dict:
            import multiprocessing as mp

            stop = threading.Event()
            got: dict = {}
            # the other user is a process of its own: its timings do not wait on this one's GIL
            ctx = mp.get_context("spawn")
            results = ctx.Queue()
            user = ctx.Process(target=other_user, args=(base, crops, args.seconds, results))
            user.start()
            threads = [threading.Thread(target=abuser, args=("scene", stop, got)) for _ in range(n_scene)]
            threads += [threading.Thread(target=abuser, args=("frame", stop, got)) for _ in range(n_frame)]
            for t in threads:
                t.start()
            time.sleep(args.seconds)
            stop.set()
            for t in threads:
                t.join()
            out = results.get()
            user.join()
            return {
                "healthz": summary(out["healthz"]),
                "crop": summary(out["crop"]),
                "crop_status": out["crop_status"],
                "abusers": got,
            }

        result = {
            "idle": phase(0, 0),
            "load": phase(args.scene_clients, args.frame_clients),
            "scene_clients": args.scene_clients,
            "frame_clients": args.frame_clients,
            "seconds": args.seconds,
            "cores": os.cpu_count(),
        }
        idle, load = result["idle"], result["load"]
        result["healthz_p95_ratio"] = round(load["healthz"]["p95_ms"] / max(idle["healthz"]["p95_ms"], 0.1), 1)
        result["crop_p95_ratio"] = round(load["crop"]["p95_ms"] / max(idle["crop"]["p95_ms"], 0.1), 1)
        if args.json:
            print(json.dumps(result))
        else:
            for name in ("idle", "load"):
                p = result[name]
                print(
                    f"{name:5s} healthz p50/p95 {p['healthz']['p50_ms']}/{p['healthz']['p95_ms']} ms, "
                    f"crop.jpg p50/p95 {p['crop']['p50_ms']}/{p['crop']['p95_ms']} ms {p['crop_status']}"
                )
            print("abusive clients got:", json.dumps(load["abusers"], sort_keys=True))
            print(f"p95 under load / idle: healthz {result['healthz_p95_ratio']}x, crop {result['crop_p95_ratio']}x")


if __name__ == "__main__":
    main()
