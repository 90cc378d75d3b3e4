"""The command line as a user drives it."""

import json
import os
import subprocess
import sys

import tiny  # noqa: F401  (test models registered for in-process CLI runs)
from conftest import png_bytes, scene, write
from typer.testing import CliRunner

from segsearch.cli import app

runner = CliRunner()


def cli_env(settings):
    env = {
        "SEGSEARCH_DATA": str(settings.data),
        "SEGSEARCH_CHECKPOINTS": str(settings.checkpoints),
        "SEGSEARCH_SAM": "sam-test-tiny",
        "SEGSEARCH_CLIP": "clip-test-tiny",
    }
    env.update({f"SEGSEARCH_{k.upper()}": str(v) for k, v in tiny.TINY_AMG.items()})
    return env


def test_index_and_search_json(settings, tmp_path):
    write(tmp_path / "lib" / "a.png", png_bytes(scene()))
    write(tmp_path / "lib" / "b.png", png_bytes(scene(color=(20, 20, 230), box=(80, 60, 50, 40))))
    write(tmp_path / "lib" / "broken.jpg", b"\xff\xd8\xff\xe0 not really")
    env = cli_env(settings)
    r = runner.invoke(app, ["index", str(tmp_path / "lib"), "--json"], env=env)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert {"indexed", "skipped", "failed", "segments", "failures"} <= set(summary)
    assert (summary["indexed"], summary["failed"]) == (2, 1)
    assert summary["failures"][0]["path"].endswith("broken.jpg") and summary["failures"][0]["error"]

    r = runner.invoke(app, ["search", "red square", "--top-k", "3", "--json"], env=env)
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert len(hits) == 3
    for h in hits:
        assert {"segment_id", "image_path", "bbox", "score", "kind"} <= set(h)
        assert len(h["bbox"]) == 4 and all(isinstance(v, int) for v in h["bbox"])
        assert h["kind"] in ("object", "image") and h["image_path"].startswith(str(tmp_path / "lib"))
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    r = runner.invoke(app, ["search", "--image", str(tmp_path / "lib" / "a.png"), "--kind", "image", "--json"], env=env)
    hits = json.loads(r.stdout)
    assert hits[0]["kind"] == "image" and hits[0]["image_path"].endswith("a.png")  # itself first
    assert hits[0]["score"] > 0.99

    r = runner.invoke(app, ["search", "x", "--path-prefix", str(tmp_path / "nowhere"), "--json"], env=env)
    assert json.loads(r.stdout) == []

    r = runner.invoke(app, ["index", str(tmp_path / "lib")], env=env)  # human summary, re-run
    assert r.exit_code == 0 and "skipped 2" in r.stdout and "broken.jpg" in r.stdout


def test_usage_errors_exit_2(settings, tmp_path):
    env = cli_env(settings)
    assert runner.invoke(app, ["index", str(tmp_path / "missing")], env=env).exit_code == 2
    assert runner.invoke(app, ["search"], env=env).exit_code == 2
    r = runner.invoke(app, ["index", str(tmp_path), "--sam", "no-such-model"], env=env)
    assert r.exit_code == 2 and "Unknown SAM model" in r.output
    r = runner.invoke(app, ["index", str(tmp_path), "--crop-mode", "sideways"], env=env)
    assert r.exit_code == 2


def test_offline_without_weights_names_the_file(tmp_path):
    write(tmp_path / "lib" / "a.png", png_bytes(scene()))
    env = {
        "SEGSEARCH_DATA": str(tmp_path / "data"),
        "SEGSEARCH_CHECKPOINTS": str(tmp_path / "ckpt"),
        "SEGSEARCH_OFFLINE": "1",
    }
    r = runner.invoke(app, ["index", str(tmp_path / "lib"), "--sam", "sam-vit-b"], env=env)
    assert r.exit_code == 2
    assert "sam_vit_b_01ec64.pth" in r.output and str(tmp_path / "ckpt") in r.output
    assert "bundled" in r.output


def test_help_is_fast_and_imports_no_torch():
    code = "import sys; from segsearch.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    r = subprocess.run(
        [sys.executable, "-m", "segsearch", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert r.returncode == 0 and "index" in r.stdout and "search" in r.stdout
