"""The server checks what a request may cost before it pays for it: key and size from the headers,
bounded concurrent work, byte-bounded caches, security headers."""

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import png_bytes, scene
from fastapi.testclient import TestClient

from segsearch.api.app import create_app
from segsearch.api.guard import ByteLRU, WorkSlots
from segsearch.api.services import Services

PROBLEM = "application/problem+json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `segsearch serve` with an API key (no models needed: the guard runs first)."""
    root = tmp_path_factory.mktemp("guard")
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEGSEARCH_")},
        "SEGSEARCH_DATA": str(root / "data"),
        "SEGSEARCH_CHECKPOINTS": str(root / "ckpt"),
        "SEGSEARCH_OFFLINE": "1",
        "SEGSEARCH_API_KEY": "s3cret",
        "SEGSEARCH_MAX_UPLOAD_BYTES": str(10 << 20),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "segsearch", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # up, and its (failing: offline, no weights) model load over: RSS is settled
        try:
            if httpx.get(base + "/readyz", timeout=1).json().get("problem") != "models are loading":
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    yield port, proc.pid
    proc.terminate()
    proc.wait(timeout=30)


def _post_big(port: int, path: str, length: int, headers: str = "", chunked: bool = False) -> tuple[str, int, float]:
    """Announce a ``length``-byte body, send it slowly, and read the answer: (status line, bytes sent
    when the answer came, seconds)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    framing = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {length}\r\n"
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}{headers}\r\n".encode()
    )
    answer, sent, t0 = {}, [0], time.monotonic()

    def read():
        answer["data"] = s.recv(65536)

    reader = threading.Thread(target=read)
    reader.start()
    block = b"[" * (1 << 20)
    try:
        while sent[0] < length and reader.is_alive():
            data = (f"{len(block):x}\r\n".encode() + block + b"\r\n") if chunked else block
            s.sendall(data)
            sent[0] += len(block)
            time.sleep(0.01)
    except OSError:
        pass  # the server closed the connection after answering
    reader.join(timeout=30)
    s.close()
    return answer.get("data", b"").split(b"\r\n")[0].decode(), sent[0], time.monotonic() - t0


def test_unauthenticated_bodies_are_refused_unread(server):
    port, pid = server
    before = _rss_kib(pid)
    for _ in range(4):
        status, sent, _ = _post_big(port, "/v1/search", 150 << 20)
        assert " 401 " in status
        assert sent < 150 << 20  # answered before the body was sent, not after reading it
    status, sent, _ = _post_big(port, "/v1/search", 150 << 20, headers="X-API-Key: wrong\r\n")
    assert " 403 " in status and sent < 150 << 20
    assert _rss_kib(pid) - before < 100 * 1024  # RSS growth under 100 MB


def test_oversized_bodies_are_413_before_reading(server):
    port, pid = server
    before = _rss_kib(pid)
    status, sent, _ = _post_big(port, "/v1/search", 150 << 20, headers="X-API-Key: s3cret\r\n")
    assert " 413 " in status and sent < 150 << 20
    status, sent, _ = _post_big(port, "/v1/search", 150 << 20, headers="X-API-Key: s3cret\r\n", chunked=True)
    assert " 413 " in status and sent < 150 << 20  # a chunked body is counted and cut at the cap
    assert _rss_kib(pid) - before < 100 * 1024


def test_headers_and_health(server):
    port, _ = server
    base = f"http://127.0.0.1:{port}"
    r = httpx.post(base + "/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM  # not a 422 with validation details
    for r in (httpx.get(base + "/healthz"), httpx.head(base + "/readyz"), httpx.get(base + "/v1/stats")):
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert httpx.head(base + "/healthz").status_code == 200


def test_work_beyond_the_limit_is_503_with_retry_after(settings, tiny_embedder, tiny_sam):
    s = settings.model_copy(update={"max_concurrent_work": 1, "max_queued_work": 0})
    services = Services(s, embedder=tiny_embedder, sam=tiny_sam)
    with TestClient(base_url="http://127.0.0.1", app=create_app(s, services=services)) as c:
        files = {"file": ("a.png", png_bytes(scene()), "image/png")}
        r = c.post("/v1/segment", files=files, data={"points": "[[10, 10]]"})
        assert r.status_code == 200, r.text
        services.work._slots.acquire()  # a request still working (e.g. one its client gave up on)
        try:
            r = c.post("/v1/segment", files=files, data={"points": "[[10, 10]]"})
            assert r.status_code == 503 and r.headers["retry-after"] and r.headers["content-type"] == PROBLEM
            r = c.post("/v1/search", json={"text": "red"})  # text search is not held up by image work
            assert r.status_code == 200
        finally:
            services.work._slots.release()
        assert c.post("/v1/segment", files=files, data={"points": "[[10, 10]]"}).status_code == 200
    services.close()


def test_slots_and_caches_are_bounded():
    slots = WorkSlots(2, 1, wait_s=0.2)
    with slots.slot(), slots.slot():
        t0 = time.monotonic()
        with pytest.raises(Exception, match="no worker became free"), slots.slot():
            pass
        assert time.monotonic() - t0 >= 0.2
    cache = ByteLRU(1000)
    for i in range(10):
        cache.put(i, b"x" * 300)
    assert cache.size <= 1000 and cache.get(9) is not None and cache.get(0) is None
    cache.put("huge", b"x" * 2000)  # larger than the whole cache: not kept
    assert cache.get("huge") is None


def test_parallel_hostile_uploads_and_retries_stay_bounded(tmp_path):
    """Eight clients for 15 s: tiny files that decode to 100 MP, a 16-bit PNG, a 1x100000 strip, and
    overlays of a 20 MP photo, retrying whenever told to (503, Retry-After) with a 1 s request
    timeout. Every answer is 2xx, 4xx or 503, no connection is reset, and the server's RSS stays
    under 3.5 GiB (two work slots on a 2-core machine: ~1 GB of work each, plus the models)."""
    import io
    import random

    import numpy as np
    import tiny
    from conftest import write
    from PIL import Image

    cli = [sys.executable, str(__import__("pathlib").Path(__file__).parent / "support" / "cli_with_tiny_models.py")]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEGSEARCH_")},
        "SEGSEARCH_DATA": str(tmp_path / "data"),
        "SEGSEARCH_CHECKPOINTS": str(tmp_path / "ckpt"),
        "SEGSEARCH_OFFLINE": "1",
        "SEGSEARCH_REQUEST_TIMEOUT_S": "1",
    }
    photo = np.zeros((4000, 5000, 3), np.uint8)
    photo[1000:3000, 1000:4000] = (220, 30, 30)
    write(tmp_path / "lib" / "photo-20mp.png", b"")
    Image.fromarray(photo).save(tmp_path / "lib" / "photo-20mp.png")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in tiny.TINY_AMG.items()]
    r = subprocess.run(
        [*cli, "index", str(tmp_path / "lib"), "--sam", "sam-test-tiny", "--clip", "clip-test-tiny", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr

    def encoded(a, fmt, **kw):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format=fmt, **kw)
        return buf.getvalue()

    webp = encoded(np.zeros((6103, 16383, 3), np.uint8), "WEBP", lossless=True)  # a few KB, 100 MP
    png16 = encoded(np.full((6000, 8000), 40000, np.uint16), "PNG")  # 16-bit, 48 MP
    strip = encoded(np.zeros((1, 100_000, 3), np.uint8), "PNG")
    assert max(len(webp), len(png16), len(strip)) < 1_000_000

    port = _free_port()
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        segments = [
            h["segment_id"]
            for h in httpx.post(
                base + "/v1/search", json={"text": "x", "top_k": 20, "filters": {"kind": "object"}}
            ).json()["hits"]
        ]
        assert segments
        peak, stop = [0], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_kib(server.pid))
                time.sleep(0.02)

        statuses, failures = [], []

        def client(seed):
            rng = random.Random(seed)
            end = time.monotonic() + 15
            with httpx.Client(base_url=base, timeout=60) as c:
                while time.monotonic() < end:
                    kind = rng.choice(["webp", "png16", "strip", "overlay", "segment"])
                    try:
                        if kind == "overlay":
                            r = c.get(f"/v1/segments/{rng.choice(segments)}/overlay.jpg?x={rng.random()}")
                        elif kind == "segment":
                            r = c.post("/v1/segment", files={"file": ("a.webp", webp)}, data={"points": "[[5, 5]]"})
                        else:
                            data = {"webp": webp, "png16": png16, "strip": strip}[kind]
                            r = c.post("/v1/search/image", files={"file": ("q", data)})
                        statuses.append(r.status_code)
                        if r.status_code == 503:
                            time.sleep(float(r.headers.get("retry-after", 1)) / 4)  # an eager client
                    except httpx.HTTPError as exc:
                        failures.append(f"{kind}: {type(exc).__name__}: {exc}")

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(2)  # work abandoned by timed-out requests finishes within its slots
        stop.set()
        sampler.join()
        assert server.poll() is None  # still up
        assert failures == []  # no resets, no transport errors
        assert statuses and all(s < 500 or s == 503 for s in statuses), sorted(set(statuses))
        assert any(s == 200 for s in statuses)
        print(f"server peak RSS {peak[0] / 1024:.0f} MiB, answers {sorted(set(statuses))}, {len(statuses)} requests")
        assert peak[0] < 3.5 * 1024 * 1024, f"server peak RSS {peak[0] / 1024:.0f} MiB"
    finally:
        server.terminate()
        server.wait(timeout=30)
