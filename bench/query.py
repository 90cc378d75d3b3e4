"""Text-query latency and throughput against a large store, and HNSW recall against exact search.

    python bench/query.py                         # embedded store, 100k and 1M points
    python bench/query.py --sizes 100000 --server # + qdrant-client local mode for comparison
    python bench/query.py --clip clip-vit-b-32 --random-weights --json  # 512-d, real-size text tower
    python bench/query.py --scene --sizes 100000,1000000 --workdir /tmp/sq   # scene queries (bench/query_scene.py)

The store is filled with random unit vectors (the store does not care where vectors come from)
whose payloads look like the indexer's (image_id, kind, area_frac, dirs over 100 folders). Each
measured query is a distinct text (so no cache hit), encoded by the CLIP text tower and searched
for the top 10: latency p50/p95/p99 and sequential queries/s, with and without a payload filter
(kind=object and one folder of 100, ~1% of points). Recall@10 of the HNSW index is measured
against exact (brute-force) search on the same store.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path


def pct(xs, q):
    import numpy as np

    return round(float(np.percentile(np.asarray(xs) * 1000, q)), 2)


def fill(index, name, n, dim, seed=0, batch=20_000):
    import numpy as np

    from segsearch.store.vectors import VectorPoint

    rng = np.random.default_rng(seed)
    index.ensure_collection(name, dim)
    t = time.perf_counter()
    for start in range(0, n, batch):
        m = min(batch, n - start)
        v = rng.normal(size=(m, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        pts = []
        for j in range(m):
            i = start + j
            folder = f"/photos/f{i % 100:03d}"
            pts.append(
                VectorPoint(
                    str(uuid.UUID(int=i + 1)),
                    v[j],
                    {
                        "image_id": f"{i // 20:040x}",
                        "kind": "image" if i % 20 == 0 else "object",
                        "area_frac": float((i * 7919 % 1000) / 1000),
                        "bbox": [0, 0, 1, 1],
                        "mask_index": i % 20,
                        "paths": [f"{folder}/{i // 20}.jpg"],
                        "dirs": ["/", "/photos", folder],
                    },
                )
            )
        index.upsert(name, pts)
    upsert_s = time.perf_counter() - t
    t = time.perf_counter()
    index.optimize()
    return upsert_s, time.perf_counter() - t


def measure(index, name, embedder, queries, flt):
    lat = []
    for q in queries:
        t = time.perf_counter()
        vec = embedder.embed_texts([q])[0]
        index.search(name, vec, 10, flt)
        lat.append(time.perf_counter() - t)
    return {
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        "qps_sequential": round(len(lat) / sum(lat), 1),
    }


def recall(index, name, dim, n_queries=100, seed=1):
    import numpy as np

    rng = np.random.default_rng(seed)
    found = 0
    t_hnsw = t_exact = 0.0
    for _ in range(n_queries):
        q = rng.normal(size=dim).astype(np.float32)
        t = time.perf_counter()
        a = {h.id for h in index.search(name, q, 10)}
        t_hnsw += time.perf_counter() - t
        t = time.perf_counter()
        e = {h.id for h in index.search(name, q, 10, exact=True)}
        t_exact += time.perf_counter() - t
        found += len(a & e)
    return round(found / (10 * n_queries), 4), round(t_hnsw / n_queries * 1000, 2), round(t_exact / n_queries * 1000, 2)


def scene_main(args) -> int:
    import shutil

    import torch
    from query_scene import fill_library, measure, open_library

    from segsearch.models.clip import ClipEmbedder
    from segsearch.models.registry import get_clip_spec
    from segsearch.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    embedder = ClipEmbedder.from_spec(get_clip_spec(args.clip), Settings().checkpoints, offline=True)
    dim = embedder.dim
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segsearch-bench-scene-"))
    runs = []
    for size in [int(v) for v in args.sizes.split(",")]:
        data = work / f"scene-{size}"
        if args.reuse and (data / "segsearch.db").exists():
            catalog, vectors, centres, themes = open_library(data, dim)
            fill_s = optimize_s = None
        else:
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            catalog, vectors, centres, themes, fill_s, optimize_s = fill_library(data, size, dim)
        for ef in [int(v) for v in args.hnsw_ef.split(",")]:
            r = {"segments": size, "dim": dim, "hnsw_ef": ef, "fill_s": fill_s and round(fill_s, 1)}
            r["optimize_s"] = optimize_s and round(optimize_s, 1)
            r.update(
                measure(catalog, vectors, centres, themes, min(args.queries, 200), ef, per_predicate=args.per_predicate)
            )
            runs.append(r)
            if not args.json:
                print(json.dumps(r), flush=True)
        vectors.close()
        catalog.close()
    enc = []
    embedder.embed_texts(["warm-up"])
    for i in range(50):
        t = time.perf_counter()
        embedder.embed_texts([f"a photo of a red circle number {i}"])
        enc.append(time.perf_counter() - t)
    report = {"clip": args.clip, "text_encode_p50_ms_per_object": pct(enc, 50), "runs": runs}
    print(json.dumps(report) if args.json else f"text encoding per object: p50 {pct(enc, 50)} ms")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--clip", default="clip-shapes-tiny")
    ap.add_argument("--random-weights", action="store_true", help="random-init text tower (timing only)")
    ap.add_argument("--server", action="store_true", help="also qdrant-client local mode (sizes <= 100k)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--hnsw-ef", default="512", help="search beam(s) of the embedded index, e.g. 128,256,512")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="embedded: reuse a store a previous run left in --workdir (skips the fill and HNSW build)",
    )
    ap.add_argument("--hnsw-m", type=int, default=16, help="HNSW edges per node of a new embedded store")
    ap.add_argument("--hnsw-ef-construct", type=int, default=100, help="HNSW build beam of a new embedded store")
    ap.add_argument("--scene", action="store_true", help="2- and 3-object scene queries (bench/query_scene.py)")
    ap.add_argument("--per-predicate", type=int, default=40, help="with --scene: queries per relation predicate")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.scene:
        return scene_main(args)

    import torch

    from segsearch.eval.shapes import COLORS, SHAPES
    from segsearch.models.clip import ClipEmbedder
    from segsearch.models.registry import get_clip_spec
    from segsearch.settings import Settings
    from segsearch.store.edge import EdgeVectorIndex
    from segsearch.store.server import ServerVectorIndex
    from segsearch.store.vectors import SearchFilter

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_clip_spec(args.clip)
    if args.random_weights:
        from dataclasses import replace

        spec = replace(spec, weights=None)
    embedder = ClipEmbedder.from_spec(spec, Settings().checkpoints, offline=True)
    dim = embedder.dim
    words = [f"{c} {s}" for c in COLORS for s in SHAPES]
    queries = [f"a photo of a {words[i % len(words)]} number {i}" for i in range(args.queries)]
    embedder.embed_texts(["warm-up"])
    flt = SearchFilter(kind="object", path_prefix="/photos/f042")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segsearch-bench-query-"))

    results = []
    efs = [int(v) for v in args.hnsw_ef.split(",")]
    backends = [
        ("embedded", lambda d: EdgeVectorIndex(d, hnsw_m=args.hnsw_m, hnsw_ef_construct=args.hnsw_ef_construct))
    ]
    if args.server:
        backends.append(("server-local", lambda d: ServerVectorIndex(":memory:")))
    for size in [int(s) for s in args.sizes.split(",")]:
        for backend, make in backends:
            if backend == "server-local" and size > 100_000:
                continue  # the client's local mode is brute-force Python: a stand-in, not a scale test
            index = make(work / f"{backend}-{size}")
            if args.reuse and backend == "embedded" and index.count("bench") == size:
                upsert_s = optimize_s = None  # built by an earlier run
            else:
                upsert_s, optimize_s = fill(index, "bench", size, dim)
            qs = queries if backend == "embedded" else queries[:50]  # local mode filters in Python: slow
            for ef in efs if backend == "embedded" else [None]:
                if ef:
                    index.hnsw_ef = ef
                r = {
                    "backend": backend,
                    "points": size,
                    "dim": dim,
                    "hnsw_m": args.hnsw_m,
                    "hnsw_ef": ef,
                    "upsert_s": upsert_s and round(upsert_s, 1),
                    "optimize_s": optimize_s and round(optimize_s, 1),
                    "queries": len(qs),
                    "text_query": measure(index, "bench", embedder, qs, None),
                    "text_query_filtered": measure(index, "bench", embedder, qs, flt),
                }
                r["recall_at_10"], r["hnsw_ms"], r["exact_ms"] = recall(
                    index, "bench", dim, 100 if backend == "embedded" else 20
                )
                results.append(r)
                if not args.json:
                    print(json.dumps(r), flush=True)
            index.close()
    enc = []
    for q in queries[:100]:
        t = time.perf_counter()
        embedder.embed_texts([q])
        enc.append(time.perf_counter() - t)
    report = {"clip": args.clip, "text_encode_p50_ms": pct(enc, 50), "runs": results}
    print(json.dumps(report) if args.json else f"text encoding alone: p50 {report['text_encode_p50_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
