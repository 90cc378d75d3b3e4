"""``segsearch index --engine ray`` on a local Ray instance (CPU actors) with the bundled small
models: it stores what the local engine stores on the same images."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import png_bytes, write

from segsearch.eval.shapes import SHAPES_AMG, make_scene
from segsearch.identity import collection_name
from segsearch.models import get_clip_spec
from segsearch.settings import Settings

pytest.importorskip("ray")


def library(root, n=4):
    for i in range(n):
        write(root / f"s{i}.png", png_bytes(make_scene(1000 + i, width=256, height=256).image))
    write(root / "broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def run(data, lib, *extra):
    env = {
        "SEGSEARCH_DATA": str(data),
        "SEGSEARCH_SAM": "sam-shapes-tiny",
        "SEGSEARCH_CLIP": "clip-shapes-tiny",
        "SEGSEARCH_OFFLINE": "1",
        **{f"SEGSEARCH_{k.upper()}": str(v) for k, v in SHAPES_AMG.items()},
    }
    import os

    r = subprocess.run(
        [sys.executable, "-m", "segsearch", "index", str(lib), "--json", *extra],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def stored(data):
    from segsearch.runtime import open_stores

    s = Settings(data=data, clip="clip-shapes-tiny")
    catalog, vectors = open_stores(s)
    try:
        coll = collection_name(get_clip_spec("clip-shapes-tiny").fingerprint)
        segs = {}
        for st in ("indexed", "failed"):
            for im in catalog.images_by_status(st):
                for seg in catalog.image_segments(im.id):
                    segs[seg.id] = (seg.image_id, seg.kind, seg.bbox, seg.area, seg.rle)
        statuses = {
            im.id: (im.status, im.error)
            for st in ("indexed", "failed", "pending")
            for im in catalog.images_by_status(st)
        }
        vecs = {k: np.asarray(v.vector) for k, v in vectors.retrieve(coll, list(segs)).items()}
    finally:
        vectors.close()
        catalog.close()
    return statuses, segs, vecs


def test_ray_engine_stores_what_the_local_engine_stores(tmp_path):
    lib = library(tmp_path / "lib")
    local = run(tmp_path / "local", lib)
    ray = run(tmp_path / "ray", lib, "--engine", "ray")
    assert local["indexed"] == ray["indexed"] == 4 and local["failed"] == ray["failed"] == 1
    assert ray["segments"] == local["segments"] > 4  # masks found, not only whole images
    s_local, seg_local, v_local = stored(tmp_path / "local")
    s_ray, seg_ray, v_ray = stored(tmp_path / "ray")
    assert s_ray == s_local  # same images, statuses and error messages
    assert seg_ray == seg_local  # same segment ids, boxes, areas and masks
    assert set(v_ray) == set(v_local) == set(seg_local)
    for k in v_local:  # same vectors (up to float rounding of different CLIP batches)
        assert np.allclose(v_ray[k], v_local[k], atol=1e-4)
    again = run(tmp_path / "ray", lib, "--engine", "ray")  # idempotent like the local engine
    assert again["indexed"] == 0 and again["skipped"] == 4
