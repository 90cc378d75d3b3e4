"""CLIP's image tower in int8 on a CPU (issue 31 item 7), opt-in: a library indexed with it
remembers it, finds what fp32 finds, and switching needs --reindex like any model setting."""

import json

from typer.testing import CliRunner

from segsearch.eval.shapes import DEMO_SEEDS, make_scene

from segsearch.cli import app

runner = CliRunner()


def test_an_int8_clip_library_remembers_it_and_finds_what_fp32_finds(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in DEMO_SEEDS[:4]:
        Image.fromarray(make_scene(seed).image).save(photos / f"{seed}.png")
    models = ["--sam", "sam-shapes-tiny", "--clip", "clip-shapes-tiny"]

    def cli(data, *args):
        r = runner.invoke(app, [*args, "--data", str(tmp_path / data)])
        assert r.exit_code == 0, r.output
        return r

    def top(data, query):
        hits = json.loads(cli(data, "search", query, "--json", "--top-k", "5").stdout)
        return [(h["image_path"], tuple(h["bbox"]), round(h["score"], 2)) for h in hits]

    cli("fp32", "index", str(photos), *models, "--json")
    cli("int8", "index", str(photos), *models, "--clip-precision", "int8", "--json")
    info = json.loads(cli("int8", "info", "--json").stdout)
    assert info["library"]["crop"]["precision"] == "int8"
    assert "precision" not in json.loads(cli("fp32", "info", "--json").stdout)["library"]["crop"]  # fp32: as before
    again = json.loads(cli("int8", "index", str(photos), "--json").stdout)  # no flag: remembered, nothing to redo
    assert again["indexed"] == 0 and again["skipped"] == 4
    for query in ("red circle", "blue square", "yellow star"):
        want, got = top("fp32", query), top("int8", query)
        assert got[0][:2] == want[0][:2], (query, want, got)  # the same best segment
        assert len({h[:2] for h in got} & {h[:2] for h in want}) >= 4, (query, want, got)  # near ties may swap
        assert all(abs(a[2] - b[2]) <= 0.02 for a, b in zip(want, got)), (want, got)
    r = runner.invoke(app, ["index", str(photos), "--clip-precision", "fp32", "--data", str(tmp_path / "int8")])
    assert r.exit_code == 2 and "--reindex" in r.output
