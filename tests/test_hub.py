"""CLIP weights from the Hugging Face Hub, as a user fetches them: `segsearch` in its own process,
HF_ENDPOINT pointing at a loopback fake hub (tests/support/fake_hub.py), a private HF_HOME."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
from conftest import png_bytes, scene, write
from fake_hub import FakeHub, running

from segsearch.models.weights import BUNDLED_CHECKPOINTS

CLI = [sys.executable, str(Path(__file__).parent / "support" / "cli_with_tiny_models.py")]
WEIGHTS = (BUNDLED_CHECKPOINTS / "clip-shapes-tiny.pt").read_bytes()
BIG = tiny.hub_big_bytes()


@pytest.fixture
def hub():
    h = FakeHub()
    h.add(tiny.HUB_REPO, {tiny.HUB_FILE: WEIGHTS, tiny.HUB_BIG_FILE: BIG}, commit=tiny.HUB_COMMIT)
    with running(h):
        yield h


def segsearch(tmp_path, hub, *args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SEGSEARCH_"))}
    e = {
        **base,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "SEGSEARCH_DATA": str(tmp_path / "data"),
        "SEGSEARCH_CHECKPOINTS": str(tmp_path / "ckpt"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        **env,
    }
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=e, timeout=300)


def cached_files(tmp_path) -> list[Path]:
    return [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and "blobs" in p.parts]


def test_download_verify_and_use_a_pinned_model(tmp_path, hub):
    r = segsearch(tmp_path, hub, "models", "download", "clip-hub-test")
    assert r.returncode == 0, r.stderr
    assert "SHA-256 verified" in r.stdout
    snapshot = tmp_path / "hf" / "hub" / "models--segsearch-test--clip-shapes-tiny" / "snapshots" / tiny.HUB_COMMIT
    assert (snapshot / tiny.HUB_FILE).read_bytes() == WEIGHTS  # the hub's own cache layout, pinned commit
    assert all(f"/resolve/{tiny.HUB_COMMIT}/" in p for _, p, _ in hub.log)  # never "main": the pin

    # the downloaded model indexes and searches (offline now: the cache is enough)
    write(tmp_path / "lib" / "a.png", png_bytes(scene()))
    r = segsearch(
        tmp_path,
        hub,
        "index",
        str(tmp_path / "lib"),
        "--sam",
        "sam-test-tiny",
        "--clip",
        "clip-hub-test",
        "--points-per-side",
        "4",
        "--pred-iou-thresh",
        "0",
        "--stability-score-thresh",
        "0",
        "--json",
        HF_HUB_OFFLINE="1",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["indexed"] == 1
    r = segsearch(tmp_path, hub, "search", "red square", "--json", HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["image_path"].endswith("a.png")


def test_an_interrupted_download_resumes(tmp_path, hub):
    hub.cut_next_get = 15 << 20  # the connection drops after 15 of 24 MB
    r = segsearch(tmp_path, hub, "models", "download", "clip-hub-big")
    assert r.returncode == 0, r.stderr
    ranges = hub.gets(tiny.HUB_BIG_FILE)
    assert len(ranges) == 2 and ranges[0] is None
    start = int(ranges[1].removeprefix("bytes=").rstrip("-"))  # the second request picked up where it stopped
    assert 0 < start <= 15 << 20
    blobs = cached_files(tmp_path)
    assert len(blobs) == 1 and blobs[0].read_bytes() == BIG


def test_a_checksum_mismatch_is_refused_and_not_kept(tmp_path, hub):
    r = segsearch(tmp_path, hub, "models", "download", "clip-hub-badsha")
    assert r.returncode == 2
    assert tiny.HUB_SHA256 in r.stderr and "expected " + "0" * 64 in r.stderr and tiny.HUB_REPO in r.stderr
    assert cached_files(tmp_path) == []  # the bad copy is gone: the next try downloads again


def test_missing_repo_or_file_names_what_and_why(tmp_path, hub):
    r = segsearch(tmp_path, hub, "models", "download", "clip-hub-private")
    assert r.returncode == 2
    assert "segsearch-test/private" in r.stderr and tiny.HUB_FILE in r.stderr and "401" in r.stderr
    assert "hf auth login" in r.stderr
    r = segsearch(tmp_path, hub, "models", "download", "clip-hub-nofile")
    assert r.returncode == 2
    assert "no_such_file.bin" in r.stderr and tiny.HUB_REPO in r.stderr and "404" in r.stderr


def test_offline_names_what_to_place_where(tmp_path, hub):
    for env in ({"HF_HUB_OFFLINE": "1"}, {"SEGSEARCH_OFFLINE": "1"}):
        r = segsearch(tmp_path, hub, "models", "download", "clip-hub-test", **env)
        assert r.returncode == 2, r.stderr
        assert f"hf download {tiny.HUB_REPO} {tiny.HUB_FILE} --revision {tiny.HUB_COMMIT}" in r.stderr
        placed = tmp_path / "ckpt" / "hub" / "segsearch-test--clip-shapes-tiny" / tiny.HUB_FILE
        assert str(placed) in r.stderr and str(tmp_path / "hf") in r.stderr
    assert hub.log == []  # offline means offline
    # a file placed there by hand is used (after the SHA-256 check), still without the network
    placed.parent.mkdir(parents=True)
    placed.write_bytes(WEIGHTS)
    r = segsearch(tmp_path, hub, "models", "download", "clip-hub-test", HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr


def test_unpinned_models_are_trusted_on_first_use_only(tmp_path, hub):
    r = segsearch(tmp_path, hub, "models", "list", "--json")
    row = next(m for m in json.loads(r.stdout) if m["name"] == "clip-hub-tofu")
    assert row["pin"].startswith("trust on first use") and row["sha256"] is None
    r = segsearch(tmp_path, hub, "models", "download", "clip-hub-tofu")
    assert r.returncode == 0, r.stderr
    pins = json.loads((tmp_path / "ckpt" / "hub-pins.json").read_text())
    assert pins[f"{tiny.HUB_REPO}/{tiny.HUB_FILE}"] == {
        "revision": tiny.HUB_COMMIT,
        "sha256": tiny.HUB_SHA256,
        "size": len(WEIGHTS),
    }
    # the same commit now serves other bytes (a tampered mirror): a fresh cache must refuse them
    hub.repos[tiny.HUB_REPO].files[tiny.HUB_FILE] = WEIGHTS[:-1] + bytes([WEIGHTS[-1] ^ 1])
    r = segsearch(tmp_path, hub, "models", "download", "clip-hub-tofu", HF_HOME=str(tmp_path / "hf2"))
    assert r.returncode == 2 and "recorded at its first download" in r.stderr and tiny.HUB_SHA256 in r.stderr
