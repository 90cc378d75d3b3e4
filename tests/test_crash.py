"""Crash safety with real processes: SIGKILL at random moments, then a normal run, must end in
exactly a clean run's state; two indexers on one data directory never corrupt it."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import png_bytes, scene, write
from test_indexer import store_state

CLI = [sys.executable, str(Path(__file__).parent / "support" / "cli_with_tiny_models.py")]


def env_for(settings):
    env = dict(os.environ)
    env.update(
        {
            f"SEGSEARCH_{k.upper()}": str(v)
            for k, v in {
                "data": settings.data,
                "checkpoints": settings.checkpoints,
                "sam": settings.sam,
                "clip": settings.clip,
                "points_per_side": settings.points_per_side,
                "points_per_batch": settings.points_per_batch,
                "pred_iou_thresh": settings.pred_iou_thresh,
                "stability_score_thresh": settings.stability_score_thresh,
                "min_segment_area": settings.min_segment_area,
                "write_group_images": 2,
            }.items()
        }
    )
    return env


def indexed_without_vectors(settings) -> set[str]:
    from segsearch.runtime import open_stores

    catalog, vectors = open_stores(settings)
    try:
        points = {c: set(vectors.iter_ids(c)) for c in vectors.collections()}
        return {
            im.id
            for im in catalog.images_by_status("indexed")
            for sid, coll in catalog.segment_refs(im.id)
            if sid not in points.get(coll, set())
        }
    finally:
        vectors.close()
        catalog.close()


def make_library(root, n):
    rng = random.Random(0)
    for i in range(n):
        w, h = rng.choice([(96, 72), (128, 96), (160, 120)])
        write(
            root / f"d{i % 3}" / f"img{i}.png",
            png_bytes(scene(width=w, height=h, box=(5 + i % 20, 10, 30 + i % 15, 25), color=(200, (37 * i) % 255, 40))),
        )


def run_index(settings, lib, **kw):
    return subprocess.run(
        [*CLI, "index", str(lib), "--json"], env=env_for(settings), capture_output=True, text=True, timeout=120, **kw
    )


def test_sigkill_at_random_moments_then_resume_equals_clean_run(settings, tmp_path):
    lib = tmp_path / "lib"
    make_library(lib, 12)
    clean = settings.model_copy(update={"data": tmp_path / "clean"})
    r = run_index(clean, lib)
    assert r.returncode == 0, r.stderr
    expected = store_state(clean)
    t0 = time.perf_counter()
    run_index(settings.model_copy(update={"data": tmp_path / "probe"}), lib)
    full = time.perf_counter() - t0  # one whole run, startup included

    rng = random.Random(1)
    trials = 0
    killed_mid_run = 0
    while trials < 20:
        force = ["--force"] if trials % 3 != 2 else []  # most trials redo everything, so kills land mid-work
        p = subprocess.Popen(
            [*CLI, "index", str(lib), "--json", *force],
            env=env_for(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(0.2, full * 0.9))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        p.wait(timeout=60)
        trials += 1
        # invariant after every kill (the consistency protocol's promise): no image is "indexed"
        # without all its vectors. (A *pending* image may have lost vectors mid-redo: it is redone.)
        assert indexed_without_vectors(settings) == set()
    assert killed_mid_run >= 10  # the trials really interrupted runs

    r = run_index(settings, lib)
    assert r.returncode == 0, r.stderr
    assert store_state(settings) == expected  # same images, same segment ids, no orphans, nothing pending
    doctor = subprocess.run([*CLI, "doctor", "--json"], env=env_for(settings), capture_output=True, text=True)
    assert doctor.returncode == 0 and json.loads(doctor.stdout)["found"]["total"] == 0


def test_two_indexers_on_one_data_directory(settings, tmp_path):
    lib = tmp_path / "lib"
    make_library(lib, 8)
    clean = settings.model_copy(update={"data": tmp_path / "clean"})
    assert run_index(clean, lib).returncode == 0
    procs = [
        subprocess.Popen(
            [*CLI, "index", str(lib), "--json"],
            env=env_for(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    if codes == [0, 3]:  # the second one stopped at once with a clear message...
        err = outs[[p.returncode for p in procs].index(3)][1]
        assert "in use by segsearch pid" in err
    else:  # ...or they ran one after the other
        assert codes == [0, 0]
    r = run_index(settings, lib)
    assert r.returncode == 0
    assert store_state(settings) == store_state(clean)
