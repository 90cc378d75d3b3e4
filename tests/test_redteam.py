"""Issue 30's attacks, replayed against a real `segsearch serve` on loopback: each test is one
finding of the red-team report and fails if the server falls for it again.

Two servers over one small library indexed with the bundled shapes models: a keyed one (read key,
admin key, one library root) and a keyless one (the default), for the browser attacks."""

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from conftest import png_bytes, scene
from live_server import serve, wait_job

from segsearch.eval.shapes import DEMO_SEEDS, SHAPES_AMG
from segsearch.settings import Settings

READ, ADMIN = "read-key-123", "admin-key-456"


def _write_scenes(folder: Path, seeds) -> None:
    from PIL import Image

    from segsearch.eval.shapes import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        Image.fromarray(make_scene(seed).image).save(folder / f"scene-{seed}.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """root/: the library root (2 scenes); private/: a photo outside it; data/: the library."""
    from segsearch import Library

    base = tmp_path_factory.mktemp("redteam")
    root, private = base / "root", base / "private"
    _write_scenes(root, DEMO_SEEDS[:2])
    _write_scenes(private, DEMO_SEEDS[2:3])
    settings = Settings(data=base / "data", sam="sam-shapes-tiny", clip="clip-shapes-tiny", **SHAPES_AMG)
    with Library(settings=settings) as library:
        assert library.index([str(root)]).indexed == 2
    import shutil

    shutil.copytree(base / "data", base / "data-copy")
    shutil.copytree(base / "data", base / "data-watch")
    return base


@pytest.fixture(scope="module")
def keyed(world):
    env = {
        "SEGSEARCH_DATA": str(world / "data"),
        "SEGSEARCH_API_KEY": READ,
        "SEGSEARCH_ADMIN_KEY": ADMIN,
        "SEGSEARCH_MAX_IMAGE_BYTES": str(1 << 20),
        "SEGSEARCH_MAX_QUEUED_JOBS": "3",
    }
    with serve(env, "--root", str(world / "root")) as base:
        yield base


def _client(base, key=None):
    return httpx.Client(base_url=base, timeout=60, headers={"X-API-Key": key} if key else {})


def test_the_read_key_cannot_index_and_no_key_reaches_outside_the_roots(keyed, world):
    with _client(keyed, READ) as reader, _client(keyed, ADMIN) as admin:
        assert reader.post("/v1/search", json={"text": "red circle"}).status_code == 200
        r = reader.post("/v1/jobs/index", json={"paths": ["."]})
        assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
        assert reader.post("/v1/jobs/repair").status_code == 403
        assert reader.get("/v1/jobs").status_code == 403 and reader.get("/v1/info").status_code == 403
        # the admin key, but paths outside the root: the host's secrets, a private photo, `..`, globs
        private = str(world / "private" / f"scene-{DEMO_SEEDS[2]}.png")
        outside = [
            "/etc/shadow",
            "/proc/self/environ",
            private,
            str(world / "root" / ".." / "private"),
            "../private",
            "/usr/**",
            str(world / "private" / "*.png"),
        ]
        details = set()
        for p in outside + [str(world / "root" / "no-such.png"), "no-such-dir"]:
            r = admin.post("/v1/jobs/index", json={"paths": [p]})
            assert r.status_code == 422, (p, r.text)
            details.add(r.json()["detail"].replace(repr(p), "PATH"))
        assert len(details) == 1  # "outside" and "missing" read the same: nothing can be probed
        assert admin.get("/v1/jobs").json() == []  # nothing was queued, nothing was read
        # a symlink under the root to the private photo is not followed either
        link = world / "root" / "link.png"
        link.symlink_to(private)
        try:
            assert admin.post("/v1/jobs/index", json={"paths": ["link.png"]}).status_code == 422
            job = admin.post("/v1/jobs/index", json={"paths": ["."]}).json()  # the folder: link skipped
            done = wait_job(admin, job["job_id"])
            assert done["status"] == "completed" and done["summary"]["indexed"] == 0, done
            assert done["progress"]["files_total"] == 2
        finally:
            link.unlink()
        hits = reader.post("/v1/search", json={"text": "x", "top_k": 50}).json()["hits"]
        assert hits and not any("private" in (h["image_path"] or "") for h in hits)


def test_a_symlink_loop_under_a_root_ends_at_once_and_cancel_stops_within_a_second(keyed, world):
    loop = world / "root" / "loop"
    loop.mkdir()
    (loop / "again").symlink_to(loop)  # glob.glob('**') would walk loop/again/again/... for minutes
    big = world / "root" / "many"
    big.mkdir()
    data = (world / "root" / f"scene-{DEMO_SEEDS[0]}.png").read_bytes()
    for i in range(60):  # distinct bytes: each is indexed
        (big / f"p{i:03d}.png").write_bytes(data + i.to_bytes(4, "big"))
    try:
        with _client(keyed, ADMIN) as c:
            t0 = time.monotonic()
            job = c.post("/v1/jobs/index", json={"paths": ["loop/**"]}).json()
            done = wait_job(c, job["job_id"], timeout=10)
            assert done["status"] == "completed" and time.monotonic() - t0 < 10, done
            # cancel a running job: it stops within a second and stays cancelled
            job = c.post("/v1/jobs/index", json={"paths": ["many"]}).json()
            deadline = time.monotonic() + 60
            while c.get(f"/v1/jobs/{job['job_id']}").json()["progress"]["files_done"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            t0 = time.monotonic()
            r = c.delete(f"/v1/jobs/{job['job_id']}")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            time.sleep(0.2)
            done_at_cancel = c.get(f"/v1/jobs/{job['job_id']}").json()["progress"]["files_done"]
            time.sleep(1.5)
            after = c.get(f"/v1/jobs/{job['job_id']}").json()
            assert after["status"] == "cancelled" and after["progress"]["files_done"] == done_at_cancel
            assert time.monotonic() - t0 < 5
            assert done_at_cancel < 60
            # newest first, paged
            jobs = c.get("/v1/jobs", params={"limit": 1}).json()
            assert [j["job_id"] for j in jobs] == [job["job_id"]]
            assert len(c.get("/v1/jobs", params={"limit": 1, "offset": 1}).json()) == 1
    finally:
        (loop / "again").unlink()
        loop.rmdir()
        for f in big.iterdir():
            f.unlink()
        big.rmdir()


def test_bodies_that_cannot_be_stored_are_422_and_big_files_fail_unread(keyed, world):
    with _client(keyed, ADMIN) as c:
        bad = '"\\udcff"'  # valid JSON, not valid Unicode
        for route, body in (
            ("/v1/jobs/index", '{"paths": [BAD]}'),
            ("/v1/search", '{"text": "x", "filters": {"tags": [BAD]}}'),
            ("/v1/search", '{"text": "x", "filters": {"image_ids": [BAD]}}'),
            ("/v1/concepts", '{"name": "c", "positives": [BAD]}'),
            ("/v1/search/scene", '{"objects": [{"text": BAD}]}'),
        ):
            body = body.replace("BAD", bad)
            r = c.post(route, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 422 and "surrogate" in r.json()["detail"], (route, r.text)
        # a file far above the photo cap (1 MiB here) fails from its size, unread
        huge = world / "root" / "huge.png"
        with open(huge, "wb") as f:
            f.truncate(200 << 20)
        try:
            job = c.post("/v1/jobs/index", json={"paths": ["huge.png"]}).json()
            done = wait_job(c, job["job_id"])
            assert done["summary"]["failed"] == 1
            assert "above the photo cap" in done["summary"]["failures"][0]["error"]
        finally:
            huge.unlink()
        # a name that is not UTF-8 indexes, alone and with the others, and shows escaped
        odd = os.path.join(os.fsencode(world / "root"), b"z-caf\xe9.png")
        with open(odd, "wb") as f:
            f.write(png_bytes(scene(color=(30, 200, 30))))
        try:
            job = c.post("/v1/jobs/index", json={"paths": ["."]}).json()
            done = wait_job(c, job["job_id"])
            assert done["status"] == "completed" and done["summary"]["indexed"] == 1, done
            hits = c.post("/v1/search", json={"text": "x", "top_k": 200}).json()["hits"]
            assert any(h["image_path"].endswith("z-caf\\xe9.png") for h in hits)
            hit = next(h for h in hits if h["image_path"].endswith("z-caf\\xe9.png"))
            assert c.get(hit["urls"]["crop"]).status_code == 200  # the real file is found again
        finally:
            os.unlink(odd)


def test_queued_jobs_are_bounded_and_metrics_need_the_key(keyed):
    with _client(keyed, ADMIN) as c:
        codes = [c.post("/v1/jobs/index", json={"paths": ["."], "force": True}).status_code for _ in range(8)]
        assert 429 in codes and codes.count(202) <= 4, codes
        for j in c.get("/v1/jobs").json():
            if j["status"] in ("queued", "running"):
                c.delete(f"/v1/jobs/{j['job_id']}")
    with _client(keyed) as anon:
        assert anon.get("/metrics").status_code == 401
        for _ in range(3):
            assert anon.post("/v1/search", json={"text": "x"}).status_code == 401
    with _client(keyed, READ) as c:
        m = c.get("/metrics")
        assert m.status_code == 200
        lines = [ln for ln in m.text.splitlines() if ln.startswith("http_requests_total")]
        assert any('status="4xx"' in ln and "/v1/search" in ln for ln in lines), lines  # the guard's answers count
        assert READ not in m.text and ADMIN not in m.text


@pytest.fixture(scope="module")
def open_server(world):
    """A keyless server (the default) over a copy of the library (the keyed one holds the original)."""
    with serve({"SEGSEARCH_DATA": str(world / "data-copy")}, "--root", str(world / "root")) as base:
        yield base


def test_a_keyless_server_refuses_other_sites_and_foreign_hosts(open_server):
    with httpx.Client(base_url=open_server, timeout=30) as c:
        # a plain HTML form on another site
        r = c.post(
            "/v1/jobs/repair",
            content="a=1",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
        )
        assert r.status_code == 403
        # the same form without Origin (older browsers, privacy tools): refused for its content type
        r = c.post("/v1/jobs/repair", content="a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415
        r = c.post("/v1/jobs/index", content=json.dumps({"paths": ["."]}), headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        # DNS rebinding: a name that resolves to 127.0.0.1 but is not ours
        r = c.get("/v1/stats", headers={"Host": "attacker.example"})
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
        assert c.get("/", headers={"Host": "attacker.example:8000"}).status_code == 400
        # the page itself (same origin) still works
        port = open_server.rsplit(":", 1)[1]
        r = c.post("/v1/search", json={"text": "red circle"}, headers={"Origin": f"http://127.0.0.1:{port}"})
        assert r.status_code == 200
        assert c.get("/v1/stats", headers={"Host": f"localhost:{port}"}).status_code == 200
        # /docs works offline: no asset from a CDN
        docs = c.get("/docs")
        assert docs.status_code == 200 and "cdn" not in docs.text.lower() and "https://" not in docs.text


def test_the_watcher_survives_odd_names_follows_moves_and_stays_inside(world):
    watched, outside = world / "watched", world / "elsewhere"
    watched.mkdir()
    outside.mkdir()
    (watched / "link").symlink_to(outside)  # a symlinked folder: not followed, live or at start
    env = {"SEGSEARCH_DATA": str(world / "data-watch")}
    with serve(env, "--watch", str(watched)) as base, httpx.Client(base_url=base, timeout=30) as c:

        def indexed_paths():
            hits = c.post("/v1/search", json={"text": "x", "top_k": 200, "filters": {"kind": "image"}}).json()
            return {h["image_path"] for h in hits["hits"]}

        def until(cond, timeout=60):
            deadline = time.monotonic() + timeout
            while not cond():
                assert time.monotonic() < deadline
                time.sleep(0.3)

        odd = os.path.join(os.fsencode(watched), b"z-caf\xe9.png")
        with open(odd, "wb") as f:
            f.write(png_bytes(scene(color=(30, 200, 30))))
        (outside / "secret.png").write_bytes(png_bytes(scene(color=(200, 30, 200))))
        until(lambda: any(p.endswith("z-caf\\xe9.png") for p in indexed_paths()))
        ready = c.get("/readyz").json()
        assert ready["checks"].get("watch") is True, ready
        # a photo moved into a new sub-folder is a move: found at its new path, not lost
        (watched / "a.png").write_bytes(png_bytes(scene(color=(220, 30, 30))))
        until(lambda: str(watched / "a.png") in indexed_paths())
        (watched / "new").mkdir()
        (watched / "a.png").rename(watched / "new" / "a.png")
        until(lambda: str(watched / "new" / "a.png") in indexed_paths())
        assert str(watched / "a.png") not in indexed_paths()
        # a later file is still indexed (the watcher lives), the one behind the symlink never is
        (watched / "b.png").write_bytes(png_bytes(scene(color=(30, 30, 220))))
        until(lambda: str(watched / "b.png") in indexed_paths())
        assert not any("secret" in p for p in indexed_paths())
        assert c.get("/readyz").json()["checks"]["watch"] is True


def _mjpeg(path: Path, sizes: list[tuple[int, int]], fps: int) -> Path:
    """An MJPEG AVI whose frames are JPEGs of the given sizes: the header says the first size only."""
    import io
    from fractions import Fraction

    import av
    from PIL import Image

    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuvj420p"
        for i, (w, h) in enumerate(sizes):
            buf = io.BytesIO()
            Image.new("RGB", (w, h), (40 * (i % 6), 90, 200)).save(buf, "JPEG", quality=40)
            packet = av.Packet(buf.getvalue())
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, fps)
            out.mux(packet)
    return path


def test_video_caps_hold_against_the_frames_not_the_header(tmp_path):
    from segsearch import Library

    vids = tmp_path / "vids"
    vids.mkdir()
    # the header says 64x64; from the 4th frame on they are 3000x2000 (above this library's 1 MP cap)
    _mjpeg(vids / "liar.avi", [(64, 64)] * 3 + [(3000, 2000)] * 4, 2)
    # 3 s of a 2x2 picture at 1000 frames/s: a tiny file asking for hours of decoding at scale
    _mjpeg(vids / "fast.avi", [(2, 2)] * 3000, 1000)
    settings = Settings(
        data=tmp_path / "data", sam="sam-shapes-tiny", clip="clip-shapes-tiny", max_image_pixels=1_000_000, **SHAPES_AMG
    )
    t0 = time.monotonic()
    with Library(settings=settings) as library:
        summary = library.index([str(vids)])
    reasons = {Path(f["path"]).name: f["error"] for f in summary.to_dict()["failures"]}
    assert summary.failed == 2 and summary.indexed == 0, summary.to_dict()
    assert "1,000,000 pixels" in reasons["liar.avi"]
    assert "frames per second" in reasons["fast.avi"]
    assert time.monotonic() - t0 < 60


def test_looping_clients_on_costly_routes_get_503_and_the_rest_stays_quick(world):
    """Scene queries take a work slot of their own pool; when it is saturated the answer is a
    503 with Retry-After (after a short pause, off every worker thread), and /healthz and
    crops do not wait on it."""
    import shutil

    from fastapi.testclient import TestClient

    from segsearch.api.app import create_app
    from segsearch.api.services import Services

    shutil.copytree(world / "data", world / "data-slots")
    s = Settings(data=world / "data-slots", max_concurrent_work=2, max_queued_work=0)
    services = Services(s)
    query = {"objects": [{"text": "red circle"}, {"text": "blue square"}], "top_k": 5}
    try:
        with TestClient(base_url="http://127.0.0.1", app=create_app(s, services=services)) as c:
            assert c.post("/v1/search/scene", json=query).status_code == 200
            crop = c.post("/v1/search", json={"text": "red", "filters": {"kind": "object"}}).json()["hits"][0]
            with services.scene_work.slot():  # every scene slot busy, no queue
                t0 = time.monotonic()
                r = c.post("/v1/search/scene", json=query)
                assert r.status_code == 503 and r.headers["retry-after"] and time.monotonic() - t0 < 5
                assert r.headers["content-type"] == "application/problem+json"
                t0 = time.monotonic()
                assert c.get("/healthz").status_code == 200
                assert c.get(crop["urls"]["crop"]).status_code == 200  # the general pool is free
                assert time.monotonic() - t0 < 2
            assert c.post("/v1/search/scene", json=query).status_code == 200
    finally:
        services.close()
