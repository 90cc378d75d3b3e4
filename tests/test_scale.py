"""Scale-out: the Qdrant server backend's collection options, batching and retries (against the
stand-in server tests/support/qdrant_shim.py over loopback HTTP), and several indexer processes sharing one
PostgreSQL database and one vector server."""

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import tiny
from test_crash import CLI, env_for, make_library

from segsearch.errors import StorageError
from segsearch.identity import collection_name
from segsearch.settings import Settings
from segsearch.store.server import ServerOptions, ServerVectorIndex
from segsearch.store.sql import Catalog
from segsearch.store.vectors import VectorPoint, open_vector_index


def points(n, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [
        VectorPoint(
            f"00000000-0000-0000-0000-{i + 1:012d}",
            v[i],
            {"image_id": f"img{i % 3}", "kind": "object", "area_frac": 0.5, "dirs": ["/"]},
        )
        for i in range(n)
    ]


def test_collection_options_from_settings_reach_the_server(qdrant_server):
    s = Settings(
        vector_backend="server",
        qdrant_url=qdrant_server.url,
        qdrant_shards=3,
        qdrant_replication_factor=2,
        qdrant_write_consistency_factor=2,
        qdrant_on_disk=True,
        qdrant_quantization="int8",
        hnsw_m=32,
        hnsw_ef_construct=200,
    )
    idx = open_vector_index(s)
    try:
        idx.ensure_collection("c", 8)
        idx.upsert("c", points(5))
        assert len(idx.search("c", points(5)[2].vector, 3)) == 3  # int8 search params accepted
    finally:
        idx.close()
    log = qdrant_server.log()
    body = log["created"]["c"]
    assert body["shard_number"] == 3 and body["replication_factor"] == 2 and body["write_consistency_factor"] == 2
    assert body["vectors"] == {"size": 8, "distance": "Cosine", "on_disk": True}
    assert body["quantization_config"]["scalar"]["type"] == "int8"
    assert body["hnsw_config"]["m"] == 32 and body["hnsw_config"]["ef_construct"] == 200
    # payload indexes on every field the query service filters on
    made = dict(log["indexes"]["c"])
    assert sorted(made) == ["area_frac", "camera", "dirs", "image_id", "kind", "location", "tags", "taken_at"]
    assert made["location"] == "geo" and made["taken_at"] == "float" and made["tags"] == "keyword"


def test_upserts_are_batched_and_transient_failures_retried(qdrant_server):
    idx = ServerVectorIndex(qdrant_server.url, options=ServerOptions(upsert_batch=10, backoff_s=0.01))
    try:
        idx.ensure_collection("c", 8)
        qdrant_server.fail("upsert", times=2, status=503)  # the server is busy twice
        idx.upsert("c", points(35))
        assert idx.count("c") == 35
        assert idx.retried == 2
    finally:
        idx.close()
    assert qdrant_server.log()["calls"]["upsert"] == 4 + 2  # 35 points in batches of 10, plus 2 refused


def test_a_server_that_keeps_failing_is_a_clear_error(qdrant_server):
    idx = ServerVectorIndex(qdrant_server.url, options=ServerOptions(retries=2, backoff_s=0.01))
    try:
        idx.ensure_collection("c", 8)
        qdrant_server.fail("upsert", times=100, status=503)
        with pytest.raises(StorageError, match="upsert .* failed 3 times"):
            idx.upsert("c", points(3))
    finally:
        idx.close()


# --- several indexers at once -------------------------------------------------------------------------------
def shared_env(settings, pg_url, qdrant_url, **extra):
    env = env_for(settings)
    env.update(
        {
            "SEGSEARCH_DATABASE_URL": pg_url,
            "SEGSEARCH_VECTOR_BACKEND": "server",
            "SEGSEARCH_QDRANT_URL": qdrant_url,
            "SEGSEARCH_QDRANT_BACKOFF_S": "0.05",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def final_state(pg_url, qdrant_url):
    catalog = Catalog.open(pg_url)
    vectors = ServerVectorIndex(qdrant_url)
    try:
        images = {im.id: im.status for st in ("indexed", "pending", "failed") for im in catalog.images_by_status(st)}
        seg_ids = catalog.segment_ids()
        point_ids = list(vectors.iter_ids(collection_name(tiny.TINY_CLIP.fingerprint)))
    finally:
        vectors.close()
        catalog.close()
    return images, seg_ids, point_ids


def start(env, lib):
    return subprocess.Popen(
        [*CLI, "index", str(lib), "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_three_indexers_split_the_work_without_doing_an_image_twice(settings, pg_url, qdrant_server, tmp_path):
    lib = tmp_path / "lib"
    make_library(lib, 18)
    env = shared_env(settings, pg_url, qdrant_server.url, SEGSEARCH_TEST_SECONDS_PER_IMAGE=0.4)
    procs = [start(env, lib) for _ in range(3)]
    summaries = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        summaries.append(json.loads(out))
    indexed = [s["indexed"] for s in summaries]
    assert sum(indexed) == 18, indexed  # every image done exactly once across the three
    assert sum(1 for n in indexed if n) >= 2, indexed  # and the work really was shared
    assert all(s["failed"] == 0 and s["indexed"] + s["skipped"] == 18 for s in summaries)
    images, seg_ids, point_ids = final_state(pg_url, qdrant_server.url)
    assert len(images) == 18 and set(images.values()) == {"indexed"}
    assert len(point_ids) == len(set(point_ids)) == len(seg_ids) == sum(s["segments"] for s in summaries)
    assert set(point_ids) == seg_ids


def test_a_crashed_indexers_images_are_taken_over(settings, pg_url, qdrant_server, tmp_path):
    """Named workers (no pid check): the dead worker's claims are taken over once its lease expires."""
    lib = tmp_path / "lib"
    make_library(lib, 12)
    env = shared_env(
        settings, pg_url, qdrant_server.url, SEGSEARCH_TEST_SECONDS_PER_IMAGE=0.4, SEGSEARCH_CLAIM_LEASE_S=3
    )
    victim = start({**env, "SEGSEARCH_WORKER_ID": "victim"}, lib)
    catalog = Catalog.open(pg_url)
    from sqlalchemy import select

    from segsearch.store.sql import ClaimRow

    def victims_claims() -> set[str]:
        with catalog.Session() as s:
            return set(s.scalars(select(ClaimRow.image_id).where(ClaimRow.worker == "victim")))

    try:
        deadline = time.monotonic() + 120
        # the victim holds an image it has started on (an image is registered "pending" a moment
        # before it is claimed: waiting on the status alone once killed it in that moment, under load)
        while not (catalog.counts()["pending"] and victims_claims()):
            assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read()
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        held = victims_claims()
        assert held, "the killed worker left no claim behind"
    finally:
        catalog.close()
    others = [start({**env, "SEGSEARCH_WORKER_ID": f"w{i}"}, lib) for i in range(2)]
    summaries = []
    for p in others:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        summaries.append(json.loads(out))
    images, seg_ids, point_ids = final_state(pg_url, qdrant_server.url)
    assert len(images) == 12 and set(images.values()) == {"indexed"}, images
    assert held <= {i for i, st in images.items() if st == "indexed"}
    assert len(point_ids) == len(set(point_ids)) == len(seg_ids) and set(point_ids) == seg_ids
    assert sum(s["indexed"] for s in summaries) >= 12 - len(held) - 0  # the survivors did the rest
