"""A new user's first day, played as they would play it: install the wheel into a fresh virtual
environment (torch from the local index, as CI and the README do), run the demo from an empty
folder, index their photos with non-default models once, then search, check, inspect and serve
without repeating any model flag, and add photos while the server runs. Loopback only: the
Hugging Face endpoint points at a closed port, so any download attempt would fail loudly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from segsearch.eval.shapes import DEMO_SEEDS, HELDOUT_SEEDS, make_scene

REPO = Path(__file__).resolve().parent.parent
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]  # the README's pinned build


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the wheel built from this checkout (not an editable install)."""
    root = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(REPO)],
        check=True,
        cwd=root,
        capture_output=True,
    )
    wheel = next((root / "dist").glob("segsearch-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    vpip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*vpip, "install", *TORCH], check=True, capture_output=True)
    subprocess.run([*vpip, "install", str(wheel)], check=True, capture_output=True)
    return venv / "bin"


def test_first_day(installed, tmp_path):
    home = tmp_path / "home"
    work = tmp_path / "work"  # the user's empty folder
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGSEARCH_", "HF_", "XDG_"))}
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_CONFIG_HOME=str(home / "config"),
        HF_ENDPOINT=f"http://127.0.0.1:{_free_port()}",
        PATH=f"{installed}:{env.get('PATH', '')}",
        PYTHONDONTWRITEBYTECODE="1",
    )

    def segsearch(*args, ok=True, timeout=600):
        r = subprocess.run(["segsearch", *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        if ok:
            assert r.returncode == 0, f"segsearch {' '.join(args)}: {r.stderr}"
        return r

    # the installed package, not this checkout
    r = subprocess.run(
        [str(installed / "python"), "-c", "import segsearch; print(segsearch.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(installed.parent) in r.stdout
    assert segsearch("--version").stdout.startswith("segsearch ")

    # 1. the demo, from an empty folder: bundled models from package data, data in the user's data dir
    demo = json.loads(segsearch("demo", "--scenes", "4", "--json").stdout)
    assert demo["index"]["indexed"] == 6 and demo["index"]["failed"] == 0  # 4 scenes and 2 clips
    assert demo["data"] == str(home / "data" / "segsearch" / "demo")
    assert any(q["hits"] for q in demo["queries"])
    assert demo["queries"][-1]["hits"][0]["kind"] == "track"  # video works from a non-editable install
    assert sorted(p.name for p in work.iterdir()) == []  # nothing written where the user stood

    # 2. their photos, indexed once with non-default models (and a smaller grid)
    photos, more = work / "photos", work / "more"
    for folder, seeds in ((photos, DEMO_SEEDS[20:24]), (more, HELDOUT_SEEDS[:2])):
        folder.mkdir()
        for s in seeds:
            Image.fromarray(make_scene(s).image).save(folder / f"scene-{s}.png")
    first = json.loads(
        segsearch(
            "index",
            "photos",
            "--sam",
            "sam-shapes-tiny",
            "--clip",
            "clip-shapes-tiny",
            "--points-per-side",
            "8",
            "--json",
        ).stdout
    )
    assert first["indexed"] == 4

    # 3. no model flags from here on: the library remembers
    hits = json.loads(segsearch("search", "red circle", "--json").stdout)
    assert hits and all(h["image_path"].startswith(str(photos)) for h in hits)
    info = json.loads(segsearch("info", "--json").stdout)
    assert info["library"]["sam"]["name"] == "sam-shapes-tiny" and info["library"]["clip"]["name"] == "clip-shapes-tiny"
    assert info["library"]["amg"]["points_per_side"] == 8
    assert info["counts"]["indexed"] == 4 and info["vectors"] == first["segments"]
    doctor = json.loads(segsearch("doctor", "--json").stdout)
    assert doctor["found"]["total"] == 0
    assert json.loads(segsearch("index", "photos", "--json").stdout)["skipped"] == 4

    # asking for other models is explicit, and the error says what is recorded and what to do
    r = segsearch("index", "photos", "--clip", "clip-vit-b-32", ok=False)
    assert r.returncode == 2
    assert "indexed with SAM sam-shapes-tiny and CLIP clip-shapes-tiny" in r.stderr and "--reindex" in r.stderr
    r = segsearch("search", "red circle", "--clip", "clip-vit-b-16", ok=False)
    assert r.returncode == 2 and "clip-shapes-tiny" in r.stderr

    # 4. serve, no flags; add photos while it runs: `index` hands them to the server
    port = _free_port()
    server = subprocess.Popen(
        ["segsearch", "serve", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.3)
        assert ready.json()["models"]["clip"] == "clip-shapes-tiny"

        added = json.loads(segsearch("index", "more", "--json").stdout)
        assert added["indexed"] == 2 and added["failed"] == 0 and set(added["stages"]) >= {"clip", "store"}
        found = httpx.post(
            f"{base}/v1/search", json={"text": "a shape", "top_k": 5, "filters": {"path_prefix": str(more)}}, timeout=30
        ).json()
        assert {Path(h["image_path"]).parent for h in found["hits"]} == {more}  # the running server sees them
        assert httpx.get(f"{base}/v1/stats", timeout=10).json()["indexed"] == 6
        via = json.loads(segsearch("search", "red circle", "--json").stdout)  # search goes through it too
        assert via and via[0]["segment_id"] == hits[0]["segment_id"]
        assert json.loads(segsearch("info", "--json").stdout)["server"] == base
        assert json.loads(segsearch("doctor", "--json").stdout)["found"]["total"] == 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert not (work / "segsearch-data" / "server.json").exists()
    # the server is gone: the next command works on the store itself again
    assert json.loads(segsearch("index", "more", "--json").stdout)["skipped"] == 2
