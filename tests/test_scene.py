"""Scene queries, concepts and photo-metadata filters as a user meets them: a folder of shapes
scenes (ground truth known) and of photos with EXIF, indexed with the bundled models; then the
server answers "a red circle left of a blue square", learns a concept from a few thumbs up and
tags what it indexes afterwards, and finds photos by date, camera and place; the CLI and the
Python library give the same answers."""

import io
import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from segsearch import Library
from segsearch.eval.quality import shapes_eval_set
from segsearch.eval.scenes import _answers, _gt
from segsearch.eval.shapes import DEMO_SEEDS, make_scene
from segsearch.relations import PREDICATES, Relation, Seg, holds, may_hold
from segsearch.settings import Settings

from segsearch.api.app import create_app
from segsearch.cli.app import app as cli

PROBLEM = "application/problem+json"


def jpeg_with_exif(rgb, *, make=None, model=None, when=None, gps=None, broken=False) -> bytes:
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    if make:
        exif[0x010F], exif[0x0110] = make, model
    if when:
        exif.get_ifd(0x8769)[0x9003] = when
    if gps:
        (lat, lat_ref), (lon, lon_ref) = gps
        g = exif.get_ifd(0x8825)
        g[1], g[2], g[3], g[4] = lat_ref, lat, lon_ref, lon
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, exif=exif.tobytes() if not broken else b"Exif\x00\x00MM\x00*garbage")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    photos = root / "photos"
    eval_set = shapes_eval_set(photos / "scenes", 14, nested=0.3)
    trips = photos / "trips"
    trips.mkdir(parents=True)
    (trips / "paris.jpg").write_bytes(
        jpeg_with_exif(
            make_scene(DEMO_SEEDS[0]).image,
            make="Canon",
            model="Canon EOS R5",
            when="2021:07:14 10:30:00",
            gps=(((48.0, 51.0, 29.6), "N"), ((2.0, 17.0, 40.2), "E")),  # the Eiffel tower
        )
    )
    (trips / "tokyo.jpg").write_bytes(
        jpeg_with_exif(
            make_scene(DEMO_SEEDS[1]).image,
            make="FUJIFILM",
            model="X-T4",
            when="2019:04:02 08:00:00",
            gps=(((35.0, 39.0, 31.0), "N"), ((139.0, 42.0, 3.0), "E")),
        )
    )
    (trips / "no-exif.jpg").write_bytes(jpeg_with_exif(make_scene(DEMO_SEEDS[2]).image))
    (trips / "broken-exif.jpg").write_bytes(jpeg_with_exif(make_scene(DEMO_SEEDS[3]).image, broken=True))
    settings = Settings(data=root / "data", sam="sam-shapes-tiny", clip="clip-shapes-tiny")
    with Library(settings=settings) as lib:
        summary = lib.index([photos])
        assert summary.failed == 0 and summary.indexed == 18, summary
        found = segmented(lib, eval_set)
    return root, eval_set, Settings(data=root / "data"), found  # later commands give no model flags


def segmented(lib, eval_set) -> set:
    """(path, label) of the ground-truth objects SAM found (a stored mask at IoU >= 0.5): a query
    about an object the segmenter missed has no right answer to find."""
    import numpy as np

    from segsearch.eval.quality import iou_matrix
    from segsearch.masks import decode_rle

    out = set()
    for im in eval_set.images:
        known = lib.catalog.lookup_path(str(im.path.resolve()))
        segs = [r for r in lib.catalog.image_segments(known[0].image_id) if r.rle]
        ious = iou_matrix(im.masks, np.stack([decode_rle(r.rle) for r in segs]))
        out |= {(str(im.path.resolve()), lab) for lab, row in zip(im.labels, ious) if row.max() >= 0.5}
    return out


def run(*args) -> list | dict:
    out = CliRunner().invoke(cli, [str(a) for a in args])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout) if "--json" in args else out.stdout


def test_cli_and_library(world):
    """Before any server holds the store: the CLI and the Python library, same answers."""
    root, eval_set, settings, found = world
    data = settings.data
    gt, pairs = relation_queries(eval_set, found, "above", 2)
    for a, b in pairs:
        with Library(data) as lib:
            page = lib.scene_search([a, b], ["0 above 1"], top_k=3)
        expected = [h.image_path for h in page.hits]
        assert expected and expected[0] in _answers(gt, a, "above", b)
        got = run("search", a, "--and", b, "--relation", "0 above 1", "--top-k", 3, "--json", "--data", data)
        assert [h["image_path"] for h in got] == expected
        assert set(got[0]) >= {"image_path", "score", "objects"} and len(got[0]["objects"]) == 2
        qfile = root / "q.json"
        qfile.write_text(
            json.dumps(
                {
                    "objects": [{"text": a}, {"text": b}],
                    "relations": [{"subject": 0, "predicate": "above", "object": 1}],
                }
            )
        )
        assert [
            h["image_path"] for h in run("search", "--scene", qfile, "--top-k", 3, "--json", "--data", data)
        ] == expected
        assert a in run("search", a, "--and", b, "--data", data) or "/" in run("search", a, "--and", b, "--data", data)
    out = CliRunner().invoke(cli, ["search", "a", "--and", "b", "--relation", "0 beside 1", "--data", str(data)])
    assert out.exit_code == 2 and "unknown predicate 'beside'" in out.output
    out = CliRunner().invoke(cli, ["search", "--scene", str(root / "missing.json"), "--data", str(data)])
    assert out.exit_code == 2 and "cannot read scene query" in out.output

    # concepts from the command line: thumbs up on three hits, the tag filter, search, removal
    hits = run("search", "blue circle", "--kind", "object", "--top-k", 4, "--json", "--data", data)
    ups = [x for h in hits[:3] for x in ("--pos", h["segment_id"])]
    made = run("concept", "add", "blue-circles", "--text", "blue circle", *ups, "--json", "--data", data)
    assert made["positives"] == 3 and made["tagged"] >= 3
    assert run("concept", "list", "--json", "--data", data)[0]["name"] == "blue-circles"
    tagged = run("search", "shape", "--tag", "blue-circles", "--top-k", 50, "--json", "--data", data)
    assert len(tagged) == made["tagged"] and {h["segment_id"] for h in hits[:3]} <= {h["segment_id"] for h in tagged}
    ranked = run("concept", "search", "blue-circles", "--top-k", 3, "--json", "--data", data)
    assert ranked[0]["score"] >= 0.5
    with Library(data) as lib:
        assert [h.segment_id for h in lib.concept_search("blue-circles", top_k=3)] == [h["segment_id"] for h in ranked]
    run("concept", "remove", "blue-circles", "--data", data)
    gone = CliRunner().invoke(cli, ["search", "shape", "--tag", "blue-circles", "--data", str(data)])
    assert gone.exit_code == 2 and "no concept named 'blue-circles'" in gone.output  # a removed concept: not "no hits"
    out = CliRunner().invoke(cli, ["concept", "remove", "blue-circles", "--data", str(data)])
    assert out.exit_code == 2 and "no concept named" in out.output
    assert {
        Path(h["image_path"]).name
        for h in run("search", "shape", "--camera", "fujifilm", "--top-k", 50, "--json", "--data", data)
    } == {"tokyo.jpg"}


@pytest.fixture(scope="module")
def client(world):
    with TestClient(base_url="http://127.0.0.1", app=create_app(world[2])) as c:
        yield c


def relation_queries(eval_set, found, predicate, n):
    """(a, b) label pairs for which the relation holds in some scene's ground truth (both found by SAM)."""
    gt = _gt(eval_set)
    out = []
    for path, objs in gt.items():
        for i, (la, sa) in enumerate(objs):
            for j, (lb, sb) in enumerate(objs):
                if {(path, la), (path, lb)} - found:
                    continue
                if i != j and la != lb and holds(predicate, sa, sb) and (la, lb) not in out:
                    out.append((la, lb))
    return gt, out[:n]


def test_scene_queries_find_the_images_with_both_objects_in_relation(world, client):
    _, eval_set, _, found = world
    gt, pairs = relation_queries(eval_set, found, "left_of", 6)
    assert len(pairs) == 6
    top1 = 0
    for a, b in pairs:
        body = {
            "objects": [{"text": a}, {"text": b}],
            "relations": [{"subject": 0, "predicate": "left_of", "object": 1}],
        }
        r = client.post("/v1/search/scene", json={**body, "top_k": 3})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert hits, (a, b)
        for h in hits:  # every answer holds the relation between the segments it names
            s, o = (Seg(tuple(x["bbox"]), x["area_frac"]) for x in h["objects"])
            assert holds("left_of", s, o)
            assert len({x["segment_id"] for x in h["objects"]}) == 2
            assert h["score"] == pytest.approx(sum(x["z"] for x in h["objects"]) / 2, abs=1e-3)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        top1 += hits[0]["image_path"] in _answers(gt, a, "left_of", b)
        seg = hits[0]["objects"][0]
        assert client.get(seg["urls"]["crop"]).status_code == 200
    assert top1 >= 5, f"top hit right for {top1} of 6 relation queries"

    # paging: the next page continues the ranking
    first = client.post("/v1/search/scene", json={"objects": [{"text": a}, {"text": b}], "top_k": 2}).json()
    second = client.post(
        "/v1/search/scene", json={"objects": [{"text": a}, {"text": b}], "top_k": 2, "offset": 2}
    ).json()
    both = client.post("/v1/search/scene", json={"objects": [{"text": a}, {"text": b}], "top_k": 4}).json()
    assert first["next_offset"] == 2
    assert [h["image_id"] for h in first["hits"] + second["hits"]] == [h["image_id"] for h in both["hits"]]


def test_bad_scene_queries_are_422_problems(world, client):
    two = [{"text": "red circle"}, {"text": "blue square"}]
    bad = {
        "unknown predicate": {"objects": two, "relations": [{"subject": 0, "predicate": "beside", "object": 1}]},
        "index out of range": {"objects": two, "relations": [{"subject": 0, "predicate": "above", "object": 2}]},
        "more than 8 objects": {"objects": [{"text": "star"}] * 9},
        "cycle": {
            "objects": two + [{"text": "ring"}],
            "relations": [
                {"subject": 0, "predicate": "left_of", "object": 1},
                {"subject": 1, "predicate": "left_of", "object": 2},
                {"subject": 0, "predicate": "right_of", "object": 2},
            ],
        },
        "itself": {"objects": two, "relations": [{"subject": 1, "predicate": "inside", "object": 1}]},
        "two queries in one object": {"objects": [{"text": "a", "concept": "b"}]},
        "no objects": {"objects": []},
        "bad base64": {"objects": [{"image_b64": "%%%"}]},
        "negative index": {"objects": two, "relations": [{"subject": -1, "predicate": "above", "object": 0}]},
    }
    for why, body in bad.items():
        r = client.post("/v1/search/scene", json=body)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, (why, r.status_code, r.text)
        assert r.json()["detail"], why
    assert "cycle" in client.post("/v1/search/scene", json=bad["cycle"]).json()["detail"]
    r = client.post("/v1/search/scene", json={"objects": [{"segment_id": "../../etc/passwd"}]})
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    schema = client.get("/openapi.json").json()
    assert {"/v1/search/scene", "/v1/concepts", "/v1/concepts/{name}/search"} <= set(schema["paths"])
    assert all(
        p in schema["components"]["schemas"]["SceneRelation"]["properties"]["predicate"]["description"]
        for p in PREDICATES
    )


def test_concept_learnt_from_clicks_tags_new_photos_too(world, client, tmp_path):
    hits = client.post("/v1/search", json={"text": "red star", "top_k": 8, "filters": {"kind": "object"}}).json()[
        "hits"
    ]
    up, down = [h["segment_id"] for h in hits[:3]], [hits[-1]["segment_id"]]
    r = client.post("/v1/concepts", json={"name": "red-stars", "text": "red star", "positives": up, "negatives": down})
    assert r.status_code == 200, r.text
    c = r.json()
    assert c["positives"] == 3 and c["negatives"] == 1 and c["version"] == 1 and c["tagged"] >= 3
    tagged = client.post("/v1/search", json={"text": "shape", "top_k": 100, "filters": {"tags": ["red-stars"]}}).json()[
        "hits"
    ]
    assert len(tagged) == c["tagged"] and set(up) <= {h["segment_id"] for h in tagged}
    assert down[0] not in {h["segment_id"] for h in tagged}
    assert all(h["tags"] == ["red-stars"] for h in tagged)
    ranked = client.post("/v1/concepts/red-stars/search", json={"top_k": 5}).json()["hits"]
    assert ranked[0]["score"] >= 0.5 and all(0 <= h["score"] <= 1 for h in ranked)
    # more clicks add to the labels (incremental), a relabelled segment changes side
    more = client.post(
        "/v1/concepts", json={"name": "red-stars", "positives": [hits[3]["segment_id"]], "negatives": [up[2]]}
    ).json()
    assert more["version"] == 2 and more["positives"] == 3 and more["negatives"] == 2
    assert [x["name"] for x in client.get("/v1/concepts").json()] == ["red-stars"]
    # a concept is a scene object too
    r = client.post("/v1/search/scene", json={"objects": [{"concept": "red-stars"}, {"text": "circle"}], "top_k": 2})
    assert r.status_code == 200 and r.json()["hits"][0]["objects"][0]["tags"] == ["red-stars"]

    # photos indexed from now on (a job on the running server) are tagged as they are written
    new = tmp_path / "new"
    new.mkdir()
    seed = next(s for s in DEMO_SEEDS[10:] if ("red", "star") in make_scene(s).labels)
    Image.fromarray(make_scene(seed).image).save(new / "later.png")
    owner = {"X-Segsearch-Owner": client.app.state.owner_token}  # the CLI's token: any path, no --root needed
    job = client.post("/v1/jobs/index", json={"paths": [str(new)]}, headers=owner).json()
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{job['job_id']}").json()["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    fresh = client.post(
        "/v1/search", json={"text": "red star", "top_k": 5, "filters": {"tags": ["red-stars"], "path_prefix": str(new)}}
    ).json()["hits"]
    assert fresh and fresh[0]["image_path"] == str(new / "later.png")

    assert client.delete("/v1/concepts/red-stars").status_code == 204
    gone = client.post("/v1/search", json={"text": "shape", "top_k": 10, "filters": {"tags": ["red-stars"]}})
    assert gone.status_code == 404 and "no concept named 'red-stars'" in gone.json()["detail"]  # not "no hits"
    assert client.delete("/v1/concepts/red-stars").status_code == 404
    assert client.get("/v1/concepts").json() == []
    for body in ({"name": "Bad Name", "text": "x"}, {"name": "x", "positives": ["no-such-segment"]}, {"name": "x"}):
        r = client.post("/v1/concepts", json=body)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, body


def test_photo_metadata_filters(world, client):
    trips = str(world[0] / "photos" / "trips")

    def images(**filters):
        hits = client.post(
            "/v1/search", json={"text": "shape", "top_k": 200, "filters": {"path_prefix": trips, **filters}}
        )
        assert hits.status_code == 200, hits.text
        return {Path(h["image_path"]).name for h in hits.json()["hits"]}

    assert images() == {"paris.jpg", "tokyo.jpg", "no-exif.jpg", "broken-exif.jpg"}
    assert images(taken_after="2020-01-01") == {"paris.jpg"}
    assert images(taken_before="2020-01-01T00:00:00Z") == {"tokyo.jpg"}
    assert images(camera="canon") == images(camera="Canon EOS R5") == {"paris.jpg"}
    assert images(camera="x-t4") == {"tokyo.jpg"}
    assert images(near={"lat": 48.8606, "lon": 2.3376, "km": 5}) == {"paris.jpg"}  # from the Louvre
    assert images(near={"lat": 48.8606, "lon": 2.3376, "km": 1}) == set()
    r = client.post("/v1/search", json={"text": "x", "filters": {"near": {"lat": 91, "lon": 0, "km": 1}}})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    hit = client.post("/v1/search", json={"text": "shape", "top_k": 1, "filters": {"camera": "canon"}}).json()["hits"][
        0
    ]
    img = client.get(f"/v1/images/{hit['image_id']}").json()
    assert img["camera"] == "Canon EOS R5" and img["taken_at"].startswith("2021-07-14T10:30:00")
    assert img["location"]["lat"] == pytest.approx(48.8582, abs=1e-3)


def test_relations_on_masks():
    """inside/contains/overlaps come from masks: a shape painted on another is inside it although
    SAM's mask of the other has a hole there."""
    import numpy as np

    from segsearch.eval.scenes import _seg

    host = np.zeros((100, 100), bool)
    host[10:90, 10:90] = True
    small = np.zeros_like(host)
    small[40:60, 40:60] = True
    edge = np.zeros_like(host)
    edge[0:20, 30:50] = True  # straddles the host's top edge
    host_visible = host & ~small & ~edge
    H, S, E = _seg(host_visible), _seg(small), _seg(edge)
    assert holds("inside", S, H) and holds("contains", H, S) and not holds("inside", H, S)
    assert not holds("inside", E, H) and holds("overlaps", E, H) and holds("overlaps", S, H)
    far = np.zeros_like(host)
    far[92:99, 92:99] = True
    assert not holds("overlaps", _seg(far), _seg(small))
    beside = np.zeros_like(host)
    beside[40:60, 65:85] = True  # 5 px right of the small square
    assert holds("larger_than", H, S) and holds("above", E, S) and not holds("near", E, S)
    assert holds("near", S, _seg(beside)) and holds("left_of", S, _seg(beside)) and not holds("larger_than", S, E)
    assert holds("right_of", S, E) and not holds("left_of", S, E)  # centres 10 px apart, half the width
    assert not holds("left_of", S, H) and not holds("right_of", S, H)  # centres aligned: neither
    assert Relation(0, "inside", 1) == Relation(0, "inside", 1)


def test_the_box_test_that_skips_reading_masks_never_drops_an_answer():
    """Scene queries skip reading the masks of images whose boxes cannot hold a relation
    (``may_hold``): wherever a relation holds on the masks, the boxes alone must allow it."""
    import numpy as np

    from segsearch.eval.scenes import _seg

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:120, :160]
    held = dict.fromkeys(PREDICATES, 0)
    for _ in range(400):
        segs = []
        for _ in range(2):  # ellipses and rectangles, some nested, touching or apart
            cx, cy, rx, ry = rng.uniform(10, 150), rng.uniform(10, 110), rng.uniform(3, 50), rng.uniform(3, 40)
            m = (
                ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
                if rng.random() < 0.5
                else ((abs(xx - cx) <= rx) & (abs(yy - cy) <= ry))
            )
            segs.append(m)
        if rng.random() < 0.3:  # a shape painted on the other: its mask has a hole there
            segs[1] = segs[1] & ~segs[0]
        if not all(m.any() for m in segs):
            continue
        s, o = (_seg(m) for m in segs)
        for p in PREDICATES:
            if holds(p, s, o):
                held[p] += 1
                boxes_only = Seg(s.bbox, s.area, diag=float(np.hypot(160, 120))), Seg(o.bbox, o.area)
                assert may_hold(p, *boxes_only), (p, s.bbox, o.bbox)
    assert all(held.values()), held  # every predicate was exercised


def test_concepts_learn_what_the_crop_hides():
    """CLIP sees every crop centred and resized: "small stars" differ from stars only in size. With
    labels, the concept's geometry weights pick that up; without geometry it could not."""
    import numpy as np

    from segsearch.concepts import geometry, train

    rng = np.random.default_rng(0)
    star = rng.normal(size=64)
    vecs = star + 0.3 * rng.normal(size=(60, 64))  # stars all alike to CLIP
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    sizes = np.where(np.arange(60) < 30, 0.005, 0.08)  # half small, half large
    geo = np.stack([geometry((10, 10, 30, 30), a, 640, 480) for a in sizes])
    small, large = np.flatnonzero(sizes < 0.01), np.flatnonzero(sizes > 0.01)
    pos, neg = small[:10], large[:10]
    model = train(vecs[pos], vecs[neg], vecs[20:], text=star, geometry=(geo[pos], geo[neg], geo[20:]))
    assert model.uses_geometry and model.v[0] < 0  # smaller is more likely
    held_small, held_large = small[10:], large[10:]
    z = model.logits(vecs, geo)  # (the text makes every star likely: compare logits, not rounded probabilities)
    assert z[held_small].min() > z[held_large].max()
    flat = train(vecs[pos], vecs[neg], vecs[20:], text=star)  # the same labels without geometry
    assert not flat.uses_geometry
