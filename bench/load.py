"""Load test over loopback: a real ``segsearch serve`` process over a store with >= 100k segments,
N concurrent clients for a fixed time, mixed text search and crop fetches.

    python bench/load.py                                # 100k segments, 16 clients, 60 s
    python bench/load.py --segments 200000 --clients 32 --seconds 120 --json
    python bench/load.py --index-job                    # idle, then the same load while an index job runs

With ``--index-job`` the load runs twice in one run, against the same server: idle, then while the
server indexes new photos (``POST /v1/jobs/index`` on batches of fresh scenes, one after another
for the whole phase). It reports both phases and the search p95 ratio (target: within 2x of idle),
plus the images the job indexed meanwhile.

The store: a few shapes-world scenes indexed for real with the bundled models, then replicated
(symlinked files, new image and segment ids, the real masks and boxes, vectors jittered around
the real ones) until it holds --segments segments, then the HNSW index is built. Every crop
fetch renders a real mask from a real file. Reports requests, errors (non-2xx or transport),
latency p50/p95/p99 per request kind, and throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path


def build_store(work: Path, n_segments: int, n_real: int = 12) -> tuple[Path, list[str]]:
    import numpy as np
    from PIL import Image

    from segsearch import Library
    from segsearch.eval.shapes import DEMO_SEEDS, SHAPES_AMG, make_scene
    from segsearch.runtime import open_stores
    from segsearch.settings import Settings
    from segsearch.store.vectors import VectorPoint, path_dirs

    data, lib = work / "data", work / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    captions = set()
    for k in range(n_real):
        sc = make_scene(DEMO_SEEDS[k])
        Image.fromarray(sc.image).save(lib / f"scene-{k:03d}.png")
        captions.update(sc.captions)
    settings = Settings(data=data, sam="sam-shapes-tiny", clip="clip-shapes-tiny", offline=True, **SHAPES_AMG)
    with Library(settings=settings) as library:
        library.index([str(lib)])
    catalog, vectors = open_stores(settings)
    try:
        coll = vectors.collections()[0]
        real = [(p, iid) for p, iid in catalog.all_paths()]
        per_image = {iid: catalog.image_segments(iid) for _, iid in real}
        vecs = {}
        for _, iid in real:
            ids = [s.id for s in per_image[iid]]
            vecs.update({k: np.asarray(v.vector, np.float32) for k, v in vectors.retrieve(coll, ids).items()})
        have = sum(len(v) for v in per_image.values())
        rng = np.random.default_rng(0)
        copy = 0
        while have < n_segments:
            copy += 1
            folder = lib / f"copy-{copy:05d}"
            folder.mkdir(exist_ok=True)
            points = []
            for path, iid in real:
                link = folder / Path(path).name
                if not link.exists():
                    link.symlink_to(path)
                new_iid = hashlib.sha256(f"{iid}:{copy}".encode()).hexdigest()
                st = os.stat(link)
                catalog.register_file(str(link), new_iid, st.st_size, st.st_mtime_ns)
                img = catalog.get_image(iid)
                segs = []
                for s in per_image[iid]:
                    sid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{s.id}:{copy}"))
                    segs.append(
                        {
                            "id": sid,
                            "kind": s.kind,
                            "mask_index": s.mask_index,
                            "x": s.x,
                            "y": s.y,
                            "w": s.w,
                            "h": s.h,
                            "area": s.area,
                            "area_frac": s.area_frac,
                            "predicted_iou": s.predicted_iou,
                            "stability_score": s.stability_score,
                            "rle": s.rle,
                        }
                    )
                    v = vecs[s.id] + rng.normal(0, 0.05, size=vecs[s.id].shape).astype(np.float32)
                    points.append(
                        VectorPoint(
                            sid,
                            v / np.linalg.norm(v),
                            {
                                "image_id": new_iid,
                                "kind": s.kind,
                                "area_frac": s.area_frac,
                                "bbox": [s.x, s.y, s.w, s.h],
                                "mask_index": s.mask_index,
                                "paths": [str(link)],
                                "dirs": path_dirs([str(link)]),
                            },
                        )
                    )
                catalog.mark_pending(new_iid, img.fingerprint, coll)
                catalog.commit_segments(
                    new_iid,
                    fingerprint=img.fingerprint,
                    collection=coll,
                    width=img.width,
                    height=img.height,
                    fmt=img.format,
                    segments=segs,
                )
                have += len(segs)
            vectors.upsert(coll, points)
        t = time.perf_counter()
        vectors.optimize()
        print(f"store: {have} segments, HNSW built in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    finally:
        vectors.close()
        catalog.close()
    return data, sorted(captions)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, q):
    import numpy as np

    return round(float(np.percentile(np.asarray(xs) * 1000, q)), 1) if xs else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--crop-share", type=float, default=0.3, help="share of requests that fetch a crop")
    ap.add_argument("--workdir", type=Path, default=None, help="reuse a store built earlier here")
    ap.add_argument("--index-job", action="store_true", help="also measure the load while an index job runs")
    ap.add_argument("--job-batch", type=int, default=8, help="fresh scenes per index job (one write group)")
    ap.add_argument(
        "--yield-s",
        type=float,
        default=None,
        help="the server's SEGSEARCH_INDEX_YIELD_S (default: the setting's default; 0 = never yield)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import httpx

    work = args.workdir or Path(tempfile.mkdtemp(prefix="segsearch-bench-load-"))
    marker = work / "store.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        data, captions = Path(info["data"]), info["captions"]
    else:
        data, captions = build_store(work, args.segments)
        marker.write_text(json.dumps({"data": str(data), "captions": captions}))

    port = free_port()
    # no model settings: the server takes them from the library's record, as a user's would
    env = dict(os.environ, SEGSEARCH_DATA=str(data), SEGSEARCH_OFFLINE="1", SEGSEARCH_PORT=str(port))
    if args.yield_s is not None:
        env["SEGSEARCH_INDEX_YIELD_S"] = str(args.yield_s)
    server = subprocess.Popen(
        [sys.executable, "-m", "segsearch", "serve", "--root", str(work)],  # index jobs go under work/
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                print(server.stderr.read(), file=sys.stderr)
                return 1
            time.sleep(0.5)
        stats = httpx.get(base + "/v1/stats", timeout=10).json()

        phases = {"idle": run_load(base, captions, args)}
        if args.index_job:
            phases["indexing"] = run_load(base, captions, args, job=IndexJobs(base, work, args.job_batch))
            alone = IndexJobs(base, work, args.job_batch, first_seed=10_000)
            alone.start()
            time.sleep(args.seconds)
            phases["job_alone"] = {"seconds": args.seconds, "index_job": alone.stop()}
    finally:
        server.terminate()
        server.wait(timeout=30)

    report = {
        "segments_in_store": stats.get("segments"),
        "images_in_store": stats.get("images"),
        "clients": args.clients,
        **phases["idle"],
    }
    if args.index_job:
        job, alone = phases["indexing"]["index_job"], phases["job_alone"]["index_job"]
        report = {
            "segments_in_store": stats.get("segments"),
            "images_in_store": stats.get("images"),
            "clients": args.clients,
            "phases": phases,
            "search_p95_ratio_indexing_vs_idle": round(
                phases["indexing"]["search"]["p95_ms"] / phases["idle"]["search"]["p95_ms"], 2
            ),
            "index_images_per_s_under_load_vs_alone": [job["images_per_s"], alone["images_per_s"]],
        }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0 if not any(p.get("errors") for p in phases.values()) else 1


class IndexJobs:
    """Keeps the server busy indexing: batches of fresh scenes, one job after another."""

    def __init__(self, base: str, work: Path, batch: int, first_seed: int = 0):
        self.base, self.work, self.batch = base, work, batch
        self.indexed, self.jobs, self.errors = 0, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._next_seed = first_seed
        self._t0 = 0.0

    def _scenes(self) -> Path:
        from PIL import Image

        from segsearch.eval.shapes import DEMO_SEEDS, make_scene

        folder = self.work / f"job-{os.getpid()}-{self._next_seed:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(self.batch):
            seed = DEMO_SEEDS[50_000 + self._next_seed]
            self._next_seed += 1
            Image.fromarray(make_scene(seed).image).save(folder / f"scene-{seed}.png")
        return folder

    def _run(self) -> None:
        import httpx

        folder = self._scenes()
        with httpx.Client(base_url=self.base, timeout=30) as c:
            while not self._stop.is_set():
                job = c.post("/v1/jobs/index", json={"paths": [str(folder)]}).json()
                self.jobs += 1
                folder = self._scenes()  # the next batch, made while this one runs
                while True:
                    j = c.get(f"/v1/jobs/{job['job_id']}").json()
                    if j["status"] in ("completed", "failed", "cancelled"):
                        break
                    if self._stop.is_set():
                        c.delete(f"/v1/jobs/{job['job_id']}")
                    time.sleep(0.2)
                self.indexed += j["progress"].get("indexed", 0)
                if j["status"] == "failed":
                    self.errors.append(j.get("error"))

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._thread.start()
        time.sleep(1.0)  # the job is running before the clients start

    def stop(self) -> dict:
        """Images committed while the phase ran (a job cut at the end keeps its written groups)."""
        seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join(timeout=120)
        return {
            "jobs": self.jobs,
            "images_indexed": self.indexed,
            "images_per_s": round(self.indexed / seconds, 3),
            "job_errors": self.errors[:3],
        }


def run_load(base: str, captions: list[str], args, job: IndexJobs | None = None) -> dict:
    import httpx

    if job is not None:
        job.start()
    lat: dict[str, list[float]] = {"search": [], "crop": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + args.seconds

    def client(seed: int):
        rng = random.Random(seed)
        seen: list[str] = []
        with httpx.Client(base_url=base, timeout=30) as c:
            while time.perf_counter() < stop_at:
                kind = "crop" if seen and rng.random() < args.crop_share else "search"
                t = time.perf_counter()
                try:
                    if kind == "search":
                        q = f"{rng.choice(['a', 'the', 'a photo of a', 'one'])} {rng.choice(captions)}"
                        r = c.post("/v1/search", json={"text": q, "top_k": 10, "group_by_image": rng.random() < 0.2})
                        if r.status_code == 200:
                            seen = [h["segment_id"] for h in r.json()["hits"]][:10] or seen
                    else:
                        r = c.get(f"/v1/segments/{rng.choice(seen)}/crop.jpg")
                    ok = r.status_code == 200
                    err = None if ok else f"{kind} {r.status_code}"
                except httpx.HTTPError as exc:
                    err = f"{kind} {type(exc).__name__}"
                dt = time.perf_counter() - t
                with lock:
                    lat[kind].append(dt)
                    if err:
                        errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    n = sum(len(v) for v in lat.values())
    out = {
        "seconds": round(wall, 1),
        "requests": n,
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:10],
        "throughput_rps": round(n / wall, 1),
        "all": {
            "p50_ms": pct(lat["search"] + lat["crop"], 50),
            "p95_ms": pct(lat["search"] + lat["crop"], 95),
            "p99_ms": pct(lat["search"] + lat["crop"], 99),
        },
        **{
            k: {"requests": len(v), "p50_ms": pct(v, 50), "p95_ms": pct(v, 95), "p99_ms": pct(v, 99)}
            for k, v in lat.items()
        },
    }
    if job is not None:
        out["index_job"] = job.stop()
    return out


if __name__ == "__main__":
    sys.exit(main())
