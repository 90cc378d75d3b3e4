"""One conformance suite, run on every VectorIndex backend: the embedded Qdrant Edge store and
the qdrant-client server backend (in the client's local mode, which has the server's API, and over
HTTP against tests/support/qdrant_shim.py, the stand-in server)."""

import uuid

import numpy as np
import pytest

from segsearch.store.edge import EdgeVectorIndex
from segsearch.store.server import ServerVectorIndex
from segsearch.store.vectors import SearchFilter, VectorPoint, path_dirs

DIM = 8


@pytest.fixture(params=["edge", "server-memory", "server-path", "server-http"])
def backend(request, tmp_path):
    if request.param == "edge":
        idx = EdgeVectorIndex(tmp_path / "vectors")
    elif request.param == "server-memory":
        idx = ServerVectorIndex(":memory:")
    elif request.param == "server-http":
        idx = ServerVectorIndex(request.getfixturevalue("qdrant_server").url)
    else:
        idx = ServerVectorIndex(str(tmp_path / "qdrant-local"))
    yield idx
    idx.close()


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def make_points(n=20, seed=0, image_ids=("img-a", "img-b"), paths=None):
    rng = np.random.default_rng(seed)
    pts = []
    for i in range(n):
        image = image_ids[i % len(image_ids)]
        p = paths or [f"/photos/{'trip' if image == 'img-a' else 'home'}/{image}.jpg"]
        pts.append(
            VectorPoint(
                str(uuid.UUID(int=i + 1)),
                unit(rng.normal(size=DIM)),
                {
                    "image_id": image,
                    "kind": "image" if i < 2 else "object",
                    "area_frac": i / n,
                    "bbox": [i, i, 10, 10],
                    "paths": p,
                    "dirs": path_dirs(p),
                },
            )
        )
    return pts


def test_upsert_search_is_exact_cosine(backend):
    backend.ensure_collection("c", DIM)
    pts = make_points()
    backend.upsert("c", pts)
    assert backend.count("c") == len(pts)
    q = pts[7].vector
    hits = backend.search("c", q, 5)
    assert hits[0].id == pts[7].id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    expected = sorted(pts, key=lambda p: -float(np.dot(p.vector, q)))[:5]
    assert [h.id for h in hits] == [p.id for p in expected]
    assert hits[0].payload["image_id"] == pts[7].payload["image_id"]
    assert hits[0].payload["bbox"] == [7, 7, 10, 10]
    # a search's own beam (scene queries' candidate searches use a narrower one) finds the same
    assert [h.id for h in backend.search("c", q, 5, hnsw_ef=64)] == [p.id for p in expected]


def test_upsert_is_idempotent_by_id(backend):
    backend.ensure_collection("c", DIM)
    pts = make_points()
    backend.upsert("c", pts)
    backend.upsert("c", pts)
    assert backend.count("c") == len(pts)
    assert sorted(backend.iter_ids("c")) == sorted(p.id for p in pts)


def test_filters(backend):
    backend.ensure_collection("c", DIM)
    pts = make_points()
    backend.upsert("c", pts)
    q = pts[0].vector
    only_b = backend.search("c", q, 50, SearchFilter(image_ids=["img-b"]))
    assert only_b and {h.payload["image_id"] for h in only_b} == {"img-b"}
    assert len(only_b) == 10
    objects = backend.search("c", q, 50, SearchFilter(kind="object"))
    assert len(objects) == 18 and all(h.payload["kind"] == "object" for h in objects)
    trip = backend.search("c", q, 50, SearchFilter(path_prefix="/photos/trip/"))
    assert len(trip) == 10 and all(h.payload["image_id"] == "img-a" for h in trip)
    assert backend.search("c", q, 50, SearchFilter(path_prefix="/photos/tri")) == []  # folders, not strings
    assert len(backend.search("c", q, 50, SearchFilter(path_prefix="/photos"))) == 20
    mid = backend.search("c", q, 50, SearchFilter(min_area=0.25, max_area=0.5))
    assert sorted(h.payload["area_frac"] for h in mid) == pytest.approx([i / 20 for i in range(5, 11)])
    assert backend.count("c", SearchFilter(image_ids=["img-a"], kind="object")) == 9


def test_photo_metadata_and_tag_filters(backend):
    """EXIF time range, camera terms and GPS radius from the payload, and concept tags set later."""
    backend.ensure_collection("c", DIM)
    pts = make_points()
    for i, p in enumerate(pts):
        if p.payload["image_id"] == "img-a":  # img-a: Paris, 2021, a Canon; img-b has no metadata
            p.payload.update(taken_at=1_626_000_000.0 + i, camera=["canon", "canon eos r5"])
            p.payload["location"] = {"lat": 48.8584, "lon": 2.2945}
    backend.upsert("c", pts)
    q = pts[0].vector
    a_ids = {p.id for p in pts if p.payload["image_id"] == "img-a"}
    assert {h.id for h in backend.search("c", q, 50, SearchFilter(taken_after=1_600_000_000.0))} == a_ids
    assert backend.search("c", q, 50, SearchFilter(taken_before=1_600_000_000.0)) == []
    assert {h.id for h in backend.search("c", q, 50, SearchFilter(camera="Canon EOS  R5"))} == a_ids
    assert backend.search("c", q, 50, SearchFilter(camera="nikon")) == []
    louvre = (48.8606, 2.3376, 5.0)  # 3.2 km from the Eiffel tower
    assert {h.id for h in backend.search("c", q, 50, SearchFilter(near=louvre))} == a_ids
    assert backend.search("c", q, 50, SearchFilter(near=(48.8606, 2.3376, 2.0))) == []
    red, both = [pts[3].id, pts[4].id, pts[5].id], [pts[4].id]
    backend.set_tags("c", {pts[3].id: ["red"], pts[4].id: ["red", "star"], pts[5].id: ["red"]})
    assert {h.id for h in backend.search("c", q, 50, SearchFilter(tags=["red"]))} == set(red)
    assert [h.id for h in backend.search("c", q, 50, SearchFilter(tags=["red", "star"]))] == both
    backend.set_tags("c", {pts[4].id: []})  # untagged again; the rest of its payload stays
    assert [h.id for h in backend.search("c", q, 50, SearchFilter(tags=["star"]))] == []
    assert backend.retrieve("c", [pts[4].id])[pts[4].id].payload["image_id"] == pts[4].payload["image_id"]


def test_sample(backend):
    backend.ensure_collection("c", DIM)
    pts = make_points()
    backend.upsert("c", pts)
    got = backend.sample("c", 8, SearchFilter(kind="object"))
    assert len(got) == 8 and len({p.id for p in got}) == 8
    assert all(p.payload["kind"] == "object" and len(p.vector) == DIM for p in got)
    assert [p.id for p in backend.sample("c", 8, SearchFilter(kind="object"))] == [p.id for p in got]  # stable
    assert len(backend.sample("c", 100)) == 20
    assert backend.sample("missing", 5) == []


def test_offset_and_threshold(backend):
    backend.ensure_collection("c", DIM)
    pts = make_points()
    backend.upsert("c", pts)
    q = pts[3].vector
    first = backend.search("c", q, 10)
    page2 = backend.search("c", q, 5, offset=5)
    assert [h.id for h in page2] == [h.id for h in first[5:10]]
    high = backend.search("c", q, 20, score_threshold=0.3)
    assert high and all(h.score >= 0.3 for h in high)
    assert len(high) == sum(1 for p in pts if float(np.dot(p.vector, q)) >= 0.3)


def test_delete_by_id_and_by_image(backend):
    backend.ensure_collection("c", DIM)
    pts = make_points()
    backend.upsert("c", pts)
    backend.delete("c", [pts[0].id, pts[1].id])
    assert backend.count("c") == 18
    backend.delete_by_image("c", "img-a")
    assert backend.count("c") == 9
    assert set(backend.iter_ids("c")) == {p.id for p in pts[2:] if p.payload["image_id"] == "img-b"}
    backend.delete("missing-collection", [pts[0].id])  # no error on an absent collection


def test_set_image_paths_updates_prefix_filter(backend):
    backend.ensure_collection("c", DIM)
    pts = make_points()
    backend.upsert("c", pts)
    backend.set_image_paths("c", "img-b", ["/photos/home/img-b.jpg", "/archive/2020/copy.jpg"])
    got = backend.search("c", pts[0].vector, 50, SearchFilter(path_prefix="/archive"))
    assert len(got) == 10 and got[0].payload["paths"][1] == "/archive/2020/copy.jpg"


def test_retrieve_and_collections(backend):
    backend.ensure_collection("a", DIM)
    backend.ensure_collection("b", 4)
    backend.ensure_collection("a", DIM)  # idempotent
    assert backend.collections() == ["a", "b"]
    pts = make_points(5)
    backend.upsert("a", pts)
    got = backend.retrieve("a", [pts[2].id, str(uuid.uuid4())])
    assert list(got) == [pts[2].id]
    assert np.allclose(got[pts[2].id].vector, pts[2].vector, atol=1e-5)
    assert backend.search("never-created", pts[0].vector, 3) == []
    assert backend.count("never-created") == 0


def test_edge_store_persists_across_reopen(tmp_path):
    idx = EdgeVectorIndex(tmp_path / "v")
    idx.ensure_collection("c", DIM)
    pts = make_points()
    idx.upsert("c", pts)
    idx.close()
    again = EdgeVectorIndex(tmp_path / "v")
    assert again.collections() == ["c"]
    assert again.count("c") == 20
    assert again.search("c", pts[4].vector, 1)[0].id == pts[4].id
    again.close()


def test_edge_collection_interrupted_while_being_created_is_not_left_half_made(tmp_path, monkeypatch):
    """A process killed while creating a collection (CI caught one: SIGKILL between the shard's
    directory appearing and its config being written) must not leave a collection that can no
    longer be opened: the next process sees no collection, creates it, and indexes into it."""
    import segsearch.store.edge as vectors

    class Dies(dict):  # the process dies while the new shard's payload indexes are being made
        def items(self):
            raise KeyboardInterrupt

    idx = EdgeVectorIndex(tmp_path / "v")
    with monkeypatch.context() as m:
        m.setattr(vectors, "PAYLOAD_INDEXES", Dies(vectors.PAYLOAD_INDEXES))
        with pytest.raises(KeyboardInterrupt):
            idx.ensure_collection("c", DIM)
    idx.close()

    again = EdgeVectorIndex(tmp_path / "v")
    assert again.collections() == [] and not again.has_collection("c")
    again.ensure_collection("c", DIM)
    pts = make_points()
    again.upsert("c", pts)
    assert again.collections() == ["c"] and again.count("c") == 20
    again.close()
    third = EdgeVectorIndex(tmp_path / "v")
    assert sorted(third.iter_ids("c")) == sorted(p.id for p in pts)
    third.close()


def test_hnsw_search_after_optimize_matches_exact(tmp_path):
    """After the indexer's end-of-run optimize, approximate search still finds the true neighbours."""
    idx = EdgeVectorIndex(tmp_path / "v")
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3000, 16)).astype(np.float32)
    idx.ensure_collection("c", 16)
    idx.upsert(
        "c",
        [
            VectorPoint(str(uuid.UUID(int=i + 1)), v, {"image_id": f"i{i % 7}", "kind": "object"})
            for i, v in enumerate(vecs)
        ],
    )
    idx.optimize()
    hits = 0
    for q in rng.normal(size=(20, 16)):
        approx = {h.id for h in idx.search("c", q, 10, hnsw_ef=128)}
        exact = {h.id for h in idx.search("c", q, 10, exact=True)}
        assert len(exact) == 10
        hits += len(approx & exact)
    assert hits / 200 >= 0.9
    flt = SearchFilter(image_ids=["i3"])
    assert all(h.payload["image_id"] == "i3" for h in idx.search("c", vecs[3], 5, flt))
    idx.close()
