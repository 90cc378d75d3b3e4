from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# helpers (tiny models, fake hub, Qdrant shim, PostgreSQL, the CLI with the tiny models) live in support/
sys.path.insert(0, str(Path(__file__).parent / "support"))

import pg  # noqa: E402
import tiny  # noqa: E402  (registers the tiny test models)

from segsearch.masks import MaskSet  # noqa: E402
from segsearch.models import amg_params  # noqa: E402
from segsearch.settings import Settings  # noqa: E402


# --- images -----------------------------------------------------------------------------------------
def scene(width=160, height=120, box=(30, 20, 60, 50), color=(220, 30, 30), bg=(40, 40, 40)) -> np.ndarray:
    """A flat background with one coloured rectangle at box=(x, y, w, h)."""
    a = np.empty((height, width, 3), np.uint8)
    a[:] = bg
    x, y, w, h = box
    a[y : y + h, x : x + w] = color
    return a


def png_bytes(a: np.ndarray, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- a deterministic mask engine for geometry tests ---------------------------------------------------
class RedMaskGenerator:
    """Test double behind the MaskGenerator interface: one mask per strongly red region
    (its bounding box), so tests can check where masks land in stored coordinates."""

    name = "red"

    def generate(self, rgb: np.ndarray) -> MaskSet:
        r, g, b = (rgb[..., i].astype(int) for i in range(3))
        m = (r > 150) & (g < 100) & (b < 100)
        if not m.any():
            return MaskSet.empty(*rgb.shape[:2])
        return MaskSet.from_masks(m[None], [1.0], [1.0])


# --- models and settings ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_sam():
    from segsearch.models.sam import load_sam

    return load_sam(tiny.TINY_SAM, Path("unused"))


@pytest.fixture(scope="session")
def tiny_embedder():
    from segsearch.models.clip import ClipEmbedder

    return ClipEmbedder.from_spec(tiny.TINY_CLIP, Path("unused"))


@pytest.fixture(scope="session")
def tiny_embedder_b():
    from segsearch.models.clip import ClipEmbedder

    return ClipEmbedder.from_spec(tiny.TINY_CLIP_B, Path("unused"))


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        data=tmp_path / "data",
        checkpoints=tmp_path / "ckpt",
        sam="sam-test-tiny",
        clip="clip-test-tiny",
        **tiny.TINY_AMG,
    )


@pytest.fixture
def make_models(tiny_sam, tiny_embedder):
    """Models for a settings object, sharing the session's loaded networks."""
    from segsearch.runtime import Models

    from segsearch.indexer.amg import make_mask_generator

    def _make(settings: Settings, *, embedder=None, mask_generator=None) -> Models:
        gen = mask_generator or make_mask_generator(settings.amg, tiny_sam, **amg_params(settings))
        return Models(settings, sam_spec=tiny.TINY_SAM, mask_generator=gen, embedder=embedder or tiny_embedder)

    return _make


@pytest.fixture
def index(make_models):
    """index(settings, paths, force=False, reindex=False, models=None) -> RunSummary, through the
    library API."""
    from segsearch import Library

    def _index(settings, paths, *, force=False, reindex=False, models=None):
        with Library(settings=settings, models=models or make_models(settings)) as library:
            return library.index([str(p) for p in paths], force=force, reindex=reindex)

    return _index


@pytest.fixture
def stores(settings):
    """Open (catalog, vectors) on the settings' data dir; closed at teardown."""
    from segsearch.runtime import open_stores

    opened = []

    def _open(s=None):
        pair = open_stores(s or settings)
        opened.append(pair)
        return pair

    yield _open
    for catalog, vectors in opened:
        vectors.close()
        catalog.close()


# --- PostgreSQL -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_admin():
    """Admin URL of a PostgreSQL server (started for the session). Skipped when none is installed,
    unless SEGSEARCH_REQUIRE_PG=1 (CI), where a missing server is an error."""
    try:
        url, server = pg.server_url()
    except (FileNotFoundError, RuntimeError) as exc:
        if os.environ.get("SEGSEARCH_REQUIRE_PG") == "1":
            raise
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield url
    if server is not None:
        server.stop()


@pytest.fixture
def pg_url(pg_admin):
    """A fresh, empty PostgreSQL database for one test."""
    url = pg.create_database(pg_admin)
    yield url
    pg.drop_database(pg_admin, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request, tmp_path):
    """The SQL layer's URL, once per supported database (storage/indexer suites run on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("pg_url")


# --- a Qdrant server over loopback (tests/support/qdrant_shim.py) ------------------------------------------------
class QdrantShim:
    def __init__(self, url: str):
        self.url = url

    def log(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/_shim/log", timeout=10).json()

    def fail(self, route: str, times: int = 1, status: int = 503) -> None:
        import httpx

        httpx.post(f"{self.url}/_shim/fail", json={"route": route, "times": times, "status": status}, timeout=10)


@pytest.fixture
def qdrant_server():
    """A stand-in Qdrant server process on a free loopback port (empty per test)."""
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "support" / "qdrant_shim.py"), "--port", str(port)]
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the Qdrant test shim did not start") from None
            time.sleep(0.2)
    yield QdrantShim(url)
    proc.terminate()
    proc.wait(timeout=10)
