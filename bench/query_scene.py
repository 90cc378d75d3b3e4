"""Scene-query latency (``bench/query.py --scene``): 2- and 3-object queries, with and without
relations, against a library of N segments in the embedded stores (Qdrant Edge + SQLite).

The library is synthetic but shaped like a real one, because a scene query's cost depends on how
often its objects meet in one image:

* 20 segments per image (one whole-image segment, 19 objects), ``N / 20`` images;
* 500 object classes, each a random unit direction; a segment's vector is its class direction
  plus noise (cosine with it ~0.55, as CLIP crops of one kind of thing cluster);
* 50 themes ("kitchen", "beach"...) of 30 classes: an image takes a theme and draws 80% of its
  objects from it, so classes of one theme co-occur, others rarely;
* boxes and areas random; every object has a rectangle mask (COCO RLE) so mask predicates
  (``overlaps``, ``inside``) decode real RLE.

A query names 2 or 3 classes of one theme (so answers exist) with their class directions as the
object vectors (the engine alone; the text encoder's cost is reported apart), and 0 or 1
relation drawn from all predicates. Reported: p50/p95/p99 ms per query kind, p50/p95 per predicate
(``per_predicate`` queries each, 2 and 3 objects), and the text encoding time per object with the
bundled CLIP, measured in the same run.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import numpy as np

PER_IMAGE = 20
CLASSES = 500
THEMES = 50
PER_THEME = 30
NOISE = 1.5  # member = unit(centre + NOISE * gaussian / sqrt(dim)): cosine with the centre ~0.55


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def fill_library(data: Path, n: int, dim: int, seed: int = 0, batch_images: int = 1000):
    """Vectors into the embedded store and records into SQLite, as the indexer would leave them."""
    from pycocotools import mask as mu
    from sqlalchemy import insert

    from segsearch.store.edge import EdgeVectorIndex
    from segsearch.store.schema import ImagePathRow, ImageRow, SegmentRow, utcnow
    from segsearch.store.sql import Catalog
    from segsearch.store.vectors import VectorPoint, path_dirs

    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(CLASSES, dim))).astype(np.float32)
    themes = [rng.choice(CLASSES, PER_THEME, replace=False) for _ in range(THEMES)]
    catalog = Catalog.open(f"sqlite:///{data / 'segsearch.db'}")
    vectors = EdgeVectorIndex(data / "vectors", hnsw_ef_construct=100)
    vectors.ensure_collection("bench", dim)
    n_images = n // PER_IMAGE
    W, H = 1600, 1200
    t0 = time.perf_counter()
    for start in range(0, n_images, batch_images):
        ids = range(start, min(n_images, start + batch_images))
        images, paths, segs, points = [], [], [], []
        for i in ids:
            iid = f"{i:064x}"
            theme = themes[i % THEMES]
            folder = f"/photos/f{i % 100:03d}"
            path = f"{folder}/{i}.jpg"
            now = utcnow()
            images.append(
                dict(id=iid, size_bytes=1, width=W, height=H, format="JPEG", status="indexed", fingerprint="bench",
                     collection="bench", n_segments=PER_IMAGE, created_at=now, updated_at=now, indexed_at=now)
            )  # fmt: skip
            paths.append(dict(path=path, image_id=iid, size_bytes=1, mtime_ns=0, seen_at=now))
            cls = np.where(
                rng.random(PER_IMAGE) < 0.8, rng.choice(theme, PER_IMAGE), rng.integers(CLASSES, size=PER_IMAGE)
            )
            vec = _unit(centres[cls] + NOISE * rng.normal(size=(PER_IMAGE, dim)).astype(np.float32) / np.sqrt(dim))
            for k in range(PER_IMAGE):
                sid = str(uuid.UUID(int=i * PER_IMAGE + k + 1))
                if k == 0:
                    x, y, w, h, rle = 0, 0, W, H, None
                else:
                    w, h = (int(v) for v in rng.integers(60, 600, size=2))
                    x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
                    r = mu.frPyObjects(np.array([[x, y, w, h]], np.float64), H, W)[0]
                    rle = {"size": [H, W], "counts": r["counts"].decode()}
                area = w * h
                segs.append(
                    dict(id=sid, image_id=iid, fingerprint="bench", collection="bench",
                         kind="image" if k == 0 else "object", mask_index=k - 1, x=x, y=y, w=w, h=h, area=area,
                         area_frac=area / (W * H), predicted_iou=0.9, stability_score=0.95, rle=rle, created_at=now)
                )  # fmt: skip
                payload = {
                    "image_id": iid,
                    "kind": "image" if k == 0 else "object",
                    "area_frac": area / (W * H),
                    "bbox": [x, y, w, h],
                    "mask_index": k - 1,
                    "paths": [path],
                    "dirs": path_dirs([path]),
                }
                points.append(VectorPoint(sid, vec[k], payload))
        with catalog.engine.begin() as conn:
            conn.execute(insert(ImageRow), images)
            conn.execute(insert(ImagePathRow), paths)
            conn.execute(insert(SegmentRow), segs)
        vectors.upsert("bench", points)
    fill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    vectors.optimize()
    return catalog, vectors, centres, themes, fill_s, time.perf_counter() - t0


def open_library(data: Path, dim: int, seed: int = 0):
    from segsearch.store.edge import EdgeVectorIndex
    from segsearch.store.sql import Catalog

    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(CLASSES, dim))).astype(np.float32)
    themes = [rng.choice(CLASSES, PER_THEME, replace=False) for _ in range(THEMES)]
    return Catalog.open(f"sqlite:///{data / 'segsearch.db'}"), EdgeVectorIndex(data / "vectors"), centres, themes


def measure(
    catalog, vectors, centres, themes, n_queries: int, hnsw_ef: int, seed: int = 1, per_predicate: int = 40
) -> dict:
    from segsearch.relations import PREDICATES, Relation
    from segsearch.scene import SceneSearcher

    vectors.hnsw_ef = hnsw_ef
    searcher = SceneSearcher(catalog, vectors, "bench")
    rnd = random.Random(seed)
    searcher.search([centres[0], centres[1]], [], top_k=10)  # warm: calibration sample, caches
    out = {}
    for n_obj in (2, 3):
        for with_rel in (False, True):
            lat, found = [], []
            for _ in range(n_queries):
                theme = themes[rnd.randrange(THEMES)]
                cls = rnd.sample(list(theme), n_obj)
                rels = [Relation(0, rnd.choice(PREDICATES), 1)] if with_rel else []
                t = time.perf_counter()
                page = searcher.search([centres[c] for c in cls], rels, top_k=10)
                lat.append(time.perf_counter() - t)
                found.append(len(page.hits))
            ms = np.asarray(lat) * 1000
            out[f"{n_obj}_objects{'_1_relation' if with_rel else ''}"] = {
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p95_ms": round(float(np.percentile(ms, 95)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1),
                "mean_hits": round(float(np.mean(found)), 1),
            }
    # every predicate on its own (a rare one, "inside", is a few of the mixed queries above): half
    # the queries with 2 objects, half with 3
    out["per_predicate"] = {}
    for p in PREDICATES:
        lat = []
        for q in range(per_predicate):
            theme = themes[rnd.randrange(THEMES)]
            cls = rnd.sample(list(theme), 2 + q % 2)
            t = time.perf_counter()
            searcher.search([centres[c] for c in cls], [Relation(0, p, 1)], top_k=10)
            lat.append(time.perf_counter() - t)
        ms = np.asarray(lat) * 1000
        out["per_predicate"][p] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
        }
    return out
