"""The query service through FastAPI's TestClient, over a library indexed with the tiny models."""

import base64
import io
import json

import numpy as np
import pytest
from conftest import png_bytes, scene, write
from fastapi.testclient import TestClient
from PIL import Image

from segsearch.models import amg_params
from segsearch.settings import Settings

from segsearch.api.app import create_app
from segsearch.api.services import Services

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_sam, tiny_embedder):
    """One small library indexed once for the whole module (the API only reads it)."""
    import tiny

    from segsearch import Library
    from segsearch.runtime import Models

    from segsearch.indexer.amg import make_mask_generator

    root = tmp_path_factory.mktemp("api")
    lib = root / "lib"
    colours = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 200, 30)]
    for i, c in enumerate(colours):
        write(lib / ("a" if i < 2 else "b") / f"img{i}.png", png_bytes(scene(color=c, box=(20 + 20 * i, 30, 60, 40))))
    settings = Settings(
        data=root / "data", checkpoints=root / "ckpt", sam="sam-test-tiny", clip="clip-test-tiny", **tiny.TINY_AMG
    )
    models = Models(
        settings,
        sam_spec=tiny.TINY_SAM,
        embedder=tiny_embedder,
        mask_generator=make_mask_generator(settings.amg, tiny_sam, **amg_params(settings)),
    )
    with Library(settings=settings, models=models) as library:
        library.index([str(lib)])
    return settings, lib


@pytest.fixture
def library(indexed):
    return indexed[1]


@pytest.fixture
def settings(indexed):
    return indexed[0]


@pytest.fixture
def client(settings, tiny_embedder, tiny_sam):
    s = settings.model_copy(update={"max_upload_bytes": 200_000, "max_image_pixels": 4_000_000})
    services = Services(s, embedder=tiny_embedder, sam=tiny_sam)
    with TestClient(base_url="http://127.0.0.1", app=create_app(s, services=services)) as c:
        yield c
    services.close()


def search(client, **body):
    r = client.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_text_search_hits_and_links(client, library):
    res = search(client, text="red square", top_k=5)
    hits = res["hits"]
    assert len(hits) == 5
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    h = next(h for h in hits if h["kind"] == "object")
    assert h["image_path"].startswith(str(library)) and len(h["bbox"]) == 4
    crop = client.get(h["urls"]["crop"])
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(crop.content)).size[0] > 0
    mask = Image.open(io.BytesIO(client.get(h["urls"]["mask"]).content))
    img = client.get(h["urls"]["image"]).json()
    assert mask.size == (img["width"], img["height"])
    overlay = client.get(h["urls"]["overlay"])
    assert overlay.status_code == 200 and Image.open(io.BytesIO(overlay.content)).size == mask.size
    seg = client.get(f"/v1/segments/{h['segment_id']}").json()
    assert seg["bbox"] == h["bbox"] and seg["rle"]["size"] == [img["height"], img["width"]]
    assert any(s["segment_id"] == h["segment_id"] for s in img["segments"])


def test_image_query_finds_itself(client, library):
    data = (library / "a" / "img0.png").read_bytes()
    res = search(client, image_b64=base64.b64encode(data).decode(), filters={"kind": "image"}, top_k=2)
    assert res["hits"][0]["image_path"].endswith("img0.png") and res["hits"][0]["score"] > 0.99
    files = {"file": ("q.png", data, "image/png")}
    r = client.post("/v1/search/image", files=files, data={"kind": "image", "top_k": "1"})
    assert r.status_code == 200 and r.json()["hits"][0]["image_path"].endswith("img0.png")
    r = client.post("/v1/search/image", files=files, data={"box": "10,10,80,60", "top_k": "3"})
    assert r.status_code == 200 and len(r.json()["hits"]) == 3


def test_more_like_this_and_negative(client):
    first = search(client, text="blue", top_k=1)["hits"][0]
    res = search(client, segment_id=first["segment_id"], top_k=3)
    assert res["hits"][0]["segment_id"] == first["segment_id"] and res["hits"][0]["score"] > 0.99
    plain = search(client, text="blue", top_k=20)
    neg = search(client, text="blue", negative_text="red", top_k=20)
    assert [h["segment_id"] for h in plain["hits"]] != [h["segment_id"] for h in neg["hits"]] or [
        h["score"] for h in plain["hits"]
    ] != [h["score"] for h in neg["hits"]]


def test_filters_grouping_and_pages(client, library):
    only_images = search(client, text="shape", filters={"kind": "image"}, top_k=50)["hits"]
    assert len(only_images) == 4 and {h["kind"] for h in only_images} == {"image"}
    under_b = search(client, text="shape", filters={"path_prefix": str(library / "b")}, top_k=50)["hits"]
    assert under_b and all("/b/" in h["image_path"] for h in under_b)
    big = search(client, text="shape", filters={"min_area": 0.5}, top_k=50)["hits"]
    assert all(h["area_frac"] >= 0.5 for h in big)

    grouped = search(client, text="shape", group_by_image=True, group_size=2, top_k=3)
    assert len(grouped["groups"]) == 3
    ids = [g["image_id"] for g in grouped["groups"]]
    assert len(set(ids)) == 3 and all(1 <= len(g["hits"]) <= 2 for g in grouped["groups"])
    assert [g["score"] for g in grouped["groups"]] == sorted((g["score"] for g in grouped["groups"]), reverse=True)
    rest = search(client, text="shape", group_by_image=True, group_size=2, top_k=3, offset=3)
    assert [g["image_id"] for g in rest["groups"]] and not set(ids) & {g["image_id"] for g in rest["groups"]}

    p1 = search(client, text="shape", top_k=3)
    p2 = search(client, text="shape", top_k=3, offset=p1["next_offset"])
    assert p1["next_offset"] == 3 and not {h["segment_id"] for h in p1["hits"]} & {h["segment_id"] for h in p2["hits"]}


def test_stats_health_page_openapi(client):
    st = client.get("/v1/stats").json()
    assert st["indexed"] == 4 and st["segments"] == st["vectors"] > 4
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "segsearch" in page.text and "/v1/search" in page.text
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    spec = client.get("/openapi.json").json()
    assert {"/v1/search", "/v1/search/image", "/v1/segment", "/v1/stats"} <= set(spec["paths"])
    # client generators name methods after operation ids: short and stable, not path-derived
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"search", "search_image", "get_segment", "get_image", "segment", "submit_index_job"} <= ids


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("get", "/v1/segments/00000000-0000-0000-0000-000000000000", None, 404),
        ("get", "/v1/segments/nope/crop.jpg", None, 404),
        ("get", "/v1/segments/..%2F..%2Fetc%2Fpasswd/mask.png", None, 404),
        ("get", "/v1/images/deadbeef", None, 404),
        ("post", "/v1/search", {"text": "a", "segment_id": "x"}, 422),
        ("post", "/v1/search", {}, 422),
        ("post", "/v1/search", {"text": "a", "top_k": 0}, 422),
        ("post", "/v1/search", {"text": "a", "filters": {"kind": "car"}}, 422),
        ("post", "/v1/search", {"text": "a", "unknown": 1}, 422),
        ("post", "/v1/search", {"image_b64": "!!!not base64!!!"}, 422),
        ("post", "/v1/search", {"image_b64": base64.b64encode(b"garbage bytes" * 10).decode()}, 415),
        ("post", "/v1/search", {"segment_id": "00000000-0000-0000-0000-000000000000"}, 404),
        ("post", "/v1/search", {"text": "a", "filters": {"tags": ["no-such-concept"]}}, 404),
    ],
)
def test_errors_are_problem_json(client, method, path, body, status):
    r = getattr(client, method)(path, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    p = r.json()
    assert p["status"] == status and p["title"]


def test_upload_limits(client):
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8))
    assert len(big) > 200_000
    r = client.post("/v1/search/image", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and r.headers["content-type"].startswith(PROBLEM)
    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, format="PNG")  # small file, 25 MP > the 4 MP cap
    r = client.post("/v1/search/image", files={"file": ("bomb.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    r = client.post("/v1/search/image", files={"file": ("x.jpg", b"", "image/jpeg")})
    assert r.status_code == 415


def test_interactive_segment_caches_embedding(client, library):
    data = (library / "a" / "img0.png").read_bytes()
    form = {"points": json.dumps([[40, 50]]), "labels": json.dumps([1]), "overlay": "true"}
    r1 = client.post("/v1/segment", files={"file": ("a.png", data, "image/png")}, data=form)
    assert r1.status_code == 200, r1.text
    b1 = r1.json()
    assert b1["cached_embedding"] is False and len(b1["masks"]) == 3 and b1["overlay_png_b64"]
    assert b1["masks"][0]["rle"]["size"] == [120, 160]
    assert [m["score"] for m in b1["masks"]] == sorted((m["score"] for m in b1["masks"]), reverse=True)
    r2 = client.post(
        "/v1/segment",
        files={"file": ("a.png", data, "image/png")},
        data={"box": "20,30,60,40", "multimask_output": "false"},
    )
    assert r2.json()["cached_embedding"] is True and len(r2.json()["masks"]) == 1
    # SAM 1 refines too: the best mask's token back as mask_input with one more click
    token = b1["masks"][0]["mask_token"]
    form = {"points": "[[40, 50], [5, 5]]", "labels": "[1, 0]", "mask_input": token, "multimask_output": "false"}
    r4 = client.post("/v1/segment", files={"file": ("a.png", data, "image/png")}, data=form)
    assert r4.status_code == 200 and len(r4.json()["masks"]) == 1, r4.text
    image_id = client.post("/v1/search", json={"text": "x", "filters": {"kind": "image"}, "top_k": 1}).json()["hits"][
        0
    ]["image_id"]
    r3 = client.post("/v1/segment", data={"image_id": image_id, "points": "[[10, 10]]"})
    assert r3.status_code == 200 and r3.json()["image_id"] == image_id
    bad = client.post("/v1/segment", data={"image_id": image_id, "points": "[[9999, 10]]"})
    assert bad.status_code == 422
    assert client.post("/v1/segment", data={"points": "[[1,1]]"}).status_code == 422
    assert client.post("/v1/segment", data={"image_id": "nope", "points": "[[1,1]]"}).status_code == 404


def test_api_key(settings, library, tiny_embedder):
    s = settings.model_copy(update={"api_key": "s3cret"})
    services = Services(s, embedder=tiny_embedder)
    with TestClient(base_url="http://127.0.0.1", app=create_app(s, services=services)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/search", json={"text": "red"})
        assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
        assert c.post("/v1/search", json={"text": "red"}, headers={"X-API-Key": "wrong"}).status_code == 403
        ok = c.post("/v1/search", json={"text": "red"}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        crop = ok.json()["hits"][0]["urls"]["crop"]
        assert c.get(crop).status_code == 401
        assert c.get(crop, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    services.close()


def test_segment_without_sam_weights_is_503_not_500(settings, tiny_embedder, tmp_path):
    s = settings.model_copy(update={"sam": "sam-vit-b", "offline": True, "checkpoints": tmp_path / "empty"})
    services = Services(s, embedder=tiny_embedder)
    with TestClient(base_url="http://127.0.0.1", app=create_app(s, services=services)) as c:
        r = c.post(
            "/v1/segment", files={"file": ("a.png", png_bytes(scene()), "image/png")}, data={"points": "[[10, 10]]"}
        )
        assert r.status_code == 503 and "sam_vit_b_01ec64.pth" in r.json()["detail"]
        assert r.headers["content-type"].startswith(PROBLEM)
    services.close()


def test_bad_input_corpus_gets_4xx_never_5xx(client):
    """Every file of the bad-input corpus (tests/test_bad_inputs.py) uploaded as a query image."""
    from test_bad_inputs import corpus

    for kind, (name, data, _expected) in corpus().items():
        r = client.post(
            "/v1/search/image", files={"file": (name, data, "application/octet-stream")}, data={"top_k": "2"}
        )
        assert r.status_code < 500, (kind, r.status_code, r.text[:200])
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith(PROBLEM), kind
            assert r.json()["detail"], kind
        r = client.post(
            "/v1/segment", files={"file": (name, data, "application/octet-stream")}, data={"points": "[[5, 5]]"}
        )
        assert r.status_code < 500, (kind, "segment", r.status_code, r.text[:200])


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"box": "1,1,inf,5"}, "box"),
        ({"box": "nan,1,5,5"}, "box"),
        ({"box": "1,1," + "9" * 400 + ",5"}, "box"),
        ({"points": "[[1e999, 2]]"}, "points"),
        ({"points": "[[1, 2]]", "labels": "[" + "9" * 30 + "]"}, "labels"),
        ({"points": "[" * 50_000}, "points"),
        ({"points": "[[1, 2]]", "labels": "[" * 50_000}, "labels"),
    ],
)
def test_malformed_prompts_are_422(client, data, needle):
    r = client.post("/v1/segment", files={"file": ("a.png", png_bytes(scene()), "image/png")}, data=data)
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text[:200]
    assert needle in r.json()["detail"]


@pytest.mark.parametrize("size", [(1, 3000), (10, 20000)])
def test_images_too_thin_for_sam_are_422(client, size):
    w, h = size
    r = client.post(
        "/v1/segment",
        files={"file": ("a.png", png_bytes(np.zeros((h, w, 3), np.uint8)), "image/png")},
        data={"points": "[[0, 5]]"},
    )
    assert r.status_code == 422 and f"{w}x{h}" in r.json()["detail"] and "too thin" in r.json()["detail"]


@pytest.mark.parametrize("b64", ["data:zz", "data:image/png,abc", "not base64!"])
def test_bad_base64_is_422(client, b64):
    r = client.post("/v1/search", json={"image_b64": b64})
    assert r.status_code == 422 and "image_b64" in r.json()["detail"]


def test_slow_request_times_out_without_stalling_others(settings, tiny_embedder, tiny_sam, monkeypatch):
    import time

    # (0.5 s: on a CI machine running four test workers on two cores, a plain query took > 0.3 s)
    s = settings.model_copy(update={"request_timeout_s": 0.5})
    services = Services(s, embedder=tiny_embedder, sam=tiny_sam)
    real = Services.text_vector

    def slow_text_vector(self, text):
        if text == "slow":
            time.sleep(2.0)
        return real(self, text)

    monkeypatch.setattr(Services, "text_vector", slow_text_vector)
    with TestClient(base_url="http://127.0.0.1", app=create_app(s, services=services)) as c:
        assert c.post("/v1/search", json={"text": "warm"}).status_code == 200  # first-query costs paid
        t = time.perf_counter()
        r = c.post("/v1/search", json={"text": "slow"})
        assert r.status_code == 503 and r.headers["content-type"].startswith(PROBLEM)
        assert r.headers["retry-after"] == "1" and time.perf_counter() - t < 1.4
        t = time.perf_counter()
        ok = c.post("/v1/search", json={"text": "red"})  # while the slow one still runs in its thread
        assert ok.status_code == 200 and time.perf_counter() - t < 1.0
    services.close()
