"""A user's second hour (issue 32), each item played as the user met it."""

import json
import subprocess

import tiny  # noqa: F401  (test models registered for in-process CLI runs)
from conftest import png_bytes, scene, write
from test_cli import cli_env
from typer.testing import CliRunner

from segsearch.cli import app

runner = CliRunner()


def test_help_shows_no_value_placeholder_on_flags_and_options_alone_show_the_help():
    """`--json <bool>` or `-v <int>` told users to type a value a flag does not take; `segsearch -v`
    answered "Missing command"."""
    for args in (["--help"], ["search", "--help"], ["index", "--help"], ["models", "list", "--help"]):
        r = runner.invoke(app, args, env={"COLUMNS": "120"})
        assert r.exit_code == 0, r.output
        assert "<bool>" not in r.output, args
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "120"}).output
    assert "<int>" not in top and "<str>" in top  # -v counts; --log-format takes a value and says so
    r = runner.invoke(app, ["-v"])
    assert r.exit_code == 0 and "Usage" in r.output and "Missing command" not in r.output


def test_info_counts_the_bytes_a_library_takes_on_disk_as_du_does(settings, tmp_path):
    """`info` said "on disk 191.4 MB" where `du` said 0.85 MB: the vector store's memory-mapped files
    are sparse, and their length is not what they take."""
    write(tmp_path / "lib" / "a.png", png_bytes(scene()))
    env = cli_env(settings)
    assert runner.invoke(app, ["index", str(tmp_path / "lib")], env=env).exit_code == 0
    r = runner.invoke(app, ["info", "--json"], env=env)
    assert r.exit_code == 0, r.output
    total = json.loads(r.stdout)["size_bytes"]["total"]
    du = int(subprocess.run(["du", "-s", "-B1", str(settings.data)], capture_output=True, text=True).stdout.split()[0])
    apparent = sum(p.stat().st_size for p in settings.data.rglob("*") if p.is_file())
    assert apparent > 3 * du  # (the sparse files this is about)
    assert abs(total - du) <= 0.1 * du + 64 * 1024, (total, du, apparent)


def test_a_tag_filter_naming_no_concept_is_an_error_not_an_empty_result(settings, tmp_path, index):
    """`--tag no-such-concept` printed "no hits", exit 0 (and the Python API returned []), so a typo
    looked like a library without such objects."""
    import pytest

    from segsearch import Library
    from segsearch.errors import NotFoundError

    write(tmp_path / "lib" / "a.png", png_bytes(scene()))
    env = cli_env(settings)
    assert runner.invoke(app, ["index", str(tmp_path / "lib")], env=env).exit_code == 0
    r = runner.invoke(app, ["search", "red square", "--tag", "no-such-concept"], env=env)
    assert r.exit_code == 2 and "no concept named 'no-such-concept'" in r.output, r.output
    with Library(settings=settings) as lib, pytest.raises(NotFoundError, match="no-such-concept"):
        lib.search("red square", filters={"tags": ["no-such-concept"]})
    assert runner.invoke(app, ["search", "red square", "--json"], env=env).exit_code == 0  # no tag: as before


def test_a_data_directory_that_is_a_file_is_one_clear_line_and_exit_2(tmp_path):
    """`--data` naming a file gave a 47-line traceback and exit 1 (index, search, info, doctor,
    export), and `serve` announced "serving ... on http://..." before exiting 3."""
    import sys

    afile = tmp_path / "library.db"
    afile.write_text("not a folder")
    (tmp_path / "lib").mkdir()
    for args in (
        ["index", str(tmp_path / "lib")],
        ["search", "red square"],
        ["info"],
        ["doctor"],
        ["export", "-o", str(tmp_path / "out.jsonl")],
        ["serve", "--port", "8765"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "segsearch", *args, "--data", str(afile)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = r.stdout + r.stderr
        assert r.returncode == 2, (args, out)
        assert f"data directory {afile} is a file" in out and "Traceback" not in out, (args, out)
        assert "serving" not in out, args


def test_models_list_names_every_model_whole_in_a_pipe_or_an_80_column_terminal():
    """Every model error points to `segsearch models list`, whose table cut names to `sam-vi…` in an
    80-column terminal or a pipe."""
    from segsearch.models.registry import list_specs

    for env in ({"COLUMNS": "80"}, {"COLUMNS": "200"}):
        r = runner.invoke(app, ["models", "list"], env=env)
        assert r.exit_code == 0, r.output
        starts = {line.split()[0] for line in r.output.splitlines() if line and not line[0].isspace()}
        assert {s["name"] for s in list_specs()} <= starts
        assert "…" not in r.output


def test_a_failed_first_run_does_not_fix_the_next_models_mask_settings(tmp_path):
    """Offline, `segsearch index photos` fails (the default SAM's weights cannot be fetched); the
    run the user then makes with the bundled models recorded SAM's generic settings (32 points,
    IoU 0.88, stability 0.95, no clean-up) instead of the model's own, and found half the segments."""
    import sys

    from segsearch.models import get_sam_spec
    from segsearch.models.registry import amg_defaults

    photos = tmp_path / "photos"
    write(photos / "a.png", png_bytes(scene()))
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSEARCH_")}
    env.update(SEGSEARCH_OFFLINE="1", SEGSEARCH_CHECKPOINTS=str(tmp_path / "ckpt"), HOME=str(tmp_path))

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "segsearch", *args, "--data", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    first = cli("index", str(photos))
    assert first.returncode == 2, first.stdout + first.stderr
    # the run says it failed (it was left "crashed", as if the process had died)
    after = json.loads(cli("info", "--json").stdout)
    assert after["last_run"]["status"] == "failed", after["last_run"]
    second = cli("index", str(photos), "--sam", "sam-shapes-tiny", "--clip", "clip-shapes-tiny")
    assert second.returncode == 0, second.stdout + second.stderr
    info = json.loads(cli("info", "--json").stdout)
    own = amg_defaults(get_sam_spec("sam-shapes-tiny"))
    recorded = info["library"]["amg"]
    for k in ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_mask_region_area"):
        assert recorded[k] == own[k], (k, recorded, own)


def test_the_cli_searches_with_what_the_api_has_paging_cut_off_negative_text_and_groups(settings, tmp_path):
    """The API had negative text, a score cut-off, results grouped per image and paging; the CLI
    had none of them."""
    from segsearch import Library

    for i, (color, box) in enumerate([((220, 30, 30), (20, 20, 60, 60)), ((30, 30, 220), (80, 60, 50, 40))] * 2):
        write(tmp_path / "lib" / f"p{i}.png", png_bytes(scene(color=color, box=(box[0] + i, *box[1:]))))
    env = cli_env(settings)
    assert runner.invoke(app, ["index", str(tmp_path / "lib")], env=env).exit_code == 0

    def ids(*args):
        r = runner.invoke(app, ["search", "red square", "--json", *args], env=env)
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    four = ids("--top-k", "4")
    assert len(four) == 4
    assert [h["segment_id"] for h in ids("--top-k", "2", "--offset", "2")] == [h["segment_id"] for h in four[2:]]
    cut = (four[1]["score"] + four[2]["score"]) / 2  # (printed scores are rounded)
    assert four[1]["score"] > four[2]["score"]
    above = ids("--top-k", "4", "--min-score", str(cut))
    assert [h["segment_id"] for h in above] == [h["segment_id"] for h in four[:2]]
    groups = ids("--top-k", "6", "--by-image")
    assert groups and len({g["image_path"] for g in groups}) == len(groups)
    assert all(1 <= len(g["hits"]) <= 3 and g["score"] == g["hits"][0]["score"] for g in groups)
    with Library(settings=settings) as lib:
        want = [h.segment_id for h in lib.search("red square", top_k=4, negative_text="blue square")]
    assert [h["segment_id"] for h in ids("--top-k", "4", "--not", "blue square")] == want
    text = runner.invoke(app, ["search", "red square", "--top-k", "2"], env=env).output
    assert "(more: --offset 2)" in text  # a person is told how to get the next page


def test_verbose_logging_shows_the_runs_decisions_and_json_lines_carry_them(settings, tmp_path):
    """`-v`, `-vv` and `--log-format json` printed nothing for `index` or `search`."""
    write(tmp_path / "lib" / "a.png", png_bytes(scene()))
    write(tmp_path / "lib" / "broken.jpg", b"\xff\xd8\xff\xe0 not an image")
    env = cli_env(settings)

    def events(*args, env=env):
        r = runner.invoke(app, [*args], env=env)
        assert r.exit_code == 0, r.output
        return [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]

    first = events("-vv", "--log-format", "json", "index", str(tmp_path / "lib"))
    start = next(e for e in first if e.get("event") == "run_start")
    assert start["sam"] == "sam-test-tiny" and start["amg"]["points_per_side"] and start["inputs"] == 2
    files = {e["path"].rsplit("/", 1)[-1]: e for e in first if e.get("event") == "file"}
    assert files["a.png"]["status"] == "indexed" and files["a.png"]["segments"] >= 1  # -vv: every image
    assert files["broken.jpg"]["status"] == "failed" and "cannot decode" in files["broken.jpg"]["reason"]
    end = next(e for e in first if e.get("event") == "run_end")
    assert end["indexed"] == 1 and end["failed"] == 1 and "sam" in " ".join(end["stages"])

    bare = {k: v for k, v in env.items() if k in ("SEGSEARCH_DATA", "SEGSEARCH_CHECKPOINTS")}
    again = events("-v", "--log-format", "json", "index", str(tmp_path / "lib"), env=bare)  # no model settings
    recalled = next(e for e in again if e.get("event") == "settings")["recalled"]
    assert recalled["sam"] == "sam-test-tiny"  # where the settings came from
    skipped = next(e for e in again if e.get("event") == "file" and e["status"] == "skipped")
    assert "unchanged" in skipped["reason"]
    assert not [e for e in again if e.get("event") == "file" and e["status"] == "indexed"]  # (-v: decisions only)

    found = events("-v", "--log-format", "json", "search", "red square")
    assert any(e.get("event") == "search_here" for e in found)
    assert next(e for e in found if e.get("event") == "search_done")["hits"] >= 1
    assert events("--log-format", "json", "search", "red square") == []  # quiet by default


def test_python_inside_the_checkout_works_after_a_plain_install(tmp_path):
    """After the README's `pip install '.[sam2]'` (not editable), `python -m segsearch` and
    `from segsearch import Library` run inside the checkout failed with "No module named
    'segsearch.cli'": the source folder came first on sys.path and shadowed the installed copy."""
    import os
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "--target", str(target), str(root)], check=True, capture_output=True)
    # this venv's editable finder would answer for segsearch.*: a plain install has none
    drop_editable = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]"
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{drop_editable}; import runpy; sys.argv = ['segsearch', '--version']; "
            "runpy.run_module('segsearch', run_name='__main__', alter_sys=True)",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and "0.1.0" in run.stdout, run.stderr[-2000:]
    code = (
        f"{drop_editable}; from segsearch import Library; import segsearch.checkpoints as c, segsearch.indexer.run; "
        "from pathlib import Path; print(sorted(p.name for p in Path(c.__file__).parent.glob('*.pt')))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "sam-shapes-tiny.pt" in run.stdout, run.stderr[-2000:]


def test_without_network_a_model_fetch_fails_at_once_in_one_line(tmp_path):
    """Offline, a CLIP fetch retried 5 times (~23 s) and printed huggingface_hub's raw retry lines
    before its error. A hub name that does not resolve now fails at once, with one line."""
    import os
    import sys
    import time

    write(tmp_path / "p" / "a.png", png_bytes(scene()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGSEARCH_", "HF_"))}
    env.update(HF_ENDPOINT="http://hub.segsearch.invalid", HF_HOME=str(tmp_path / "hf"))
    args = ["index", str(tmp_path / "p"), "--data", str(tmp_path / "d"), "--sam", "sam-shapes-tiny"]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "segsearch", *args], env=env, capture_output=True, text=True)
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert not any("Retry" in ln or "thrown while requesting" in ln for ln in lines), lines
    assert len(lines) == 1 and "cannot resolve hub.segsearch.invalid" in lines[0], lines
    assert took < 20, took  # interpreter, torch and the bundled SAM included; the retries alone took 23 s


def test_a_server_answers_at_once_and_retries_a_failed_model_load_in_the_background(settings, monkeypatch):
    """A server whose CLIP could not be fetched made /healthz wait ~32 s and blocked every search
    ~23 s on a new fetch. Now it answers from the first second, each search says why at once, and
    the load is retried in the background: once the weights are there, it serves without a restart."""
    import time

    from fastapi.testclient import TestClient

    from segsearch import runtime
    from segsearch.errors import WeightsUnavailable

    from segsearch.api import services
    from segsearch.api.app import create_app

    tries, real = [], runtime.load_clip

    def flaky(*a, **kw):
        tries.append(time.monotonic())
        if len(tries) < 3:
            time.sleep(0.5)  # a fetch that takes a while, then fails
            raise WeightsUnavailable("cannot resolve hub.example (no network)")
        return real(*a, **kw)

    monkeypatch.setattr(runtime, "load_clip", flaky)
    monkeypatch.setattr(services, "LOAD_RETRY_S", (0.5, 1.0))
    t0 = time.monotonic()
    with TestClient(base_url="http://127.0.0.1", app=create_app(settings)) as c:
        assert c.get("/healthz").status_code == 200 and time.monotonic() - t0 < 2
        while c.get("/readyz").json().get("problem") == "models are loading":
            time.sleep(0.05)
        t1 = time.monotonic()
        r = c.post("/v1/search", json={"text": "red"})
        assert r.status_code == 503 and "no network" in r.json()["detail"] and r.headers["retry-after"]
        assert time.monotonic() - t1 < 0.5  # said at once, not after another fetch
        ready = c.get("/readyz").json()
        assert "no network" in ready["problem"] and "next_load_in_s" in ready
        deadline = time.monotonic() + 20
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").json()
            time.sleep(0.1)
        assert c.post("/v1/search", json={"text": "red"}).status_code == 200
    assert len(tries) == 3  # in the background, with backoff: not once per request


def test_a_cold_cli_text_query_does_not_load_torch_and_finds_what_torch_finds(tmp_path):
    """Every CLI query cost 9-11 s and ~1 GB, ~8 s of it importing torch, open_clip and timm. Now
    indexing leaves CLIP's text tower in the library (NumPy), and a text query from a new process
    uses it: no torch, the same hits in the same order."""
    import os
    import shutil
    import sys

    write(tmp_path / "p" / "red.png", png_bytes(scene(color=(220, 30, 30))))
    write(tmp_path / "p" / "blue.png", png_bytes(scene(box=(80, 50, 50, 40), color=(30, 30, 220))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSEARCH_")}
    data = tmp_path / "d"
    index = [sys.executable, "-m", "segsearch", "index", str(tmp_path / "p"), "--data", str(data)]
    r = subprocess.run([*index, "--sam", "sam-shapes-tiny", "--clip", "clip-shapes-tiny"], env=env, capture_output=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert list((data / "text-tower").glob("*/meta.json"))
    probe = (
        "import atexit, runpy, sys; "
        "atexit.register(lambda: print('TORCH', 'torch' in sys.modules, file=sys.stderr)); "
        f"sys.argv = ['segsearch', 'search', 'red circle', '--data', {str(data)!r}, '--json']; "
        "runpy.run_module('segsearch', run_name='__main__')"
    )

    def query() -> tuple[list[str], bool]:
        r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        hits = [h["segment_id"] for h in json.loads(r.stdout)]
        return hits, "TORCH True" in r.stderr

    cold, torch_loaded = query()
    assert cold and not torch_loaded
    shutil.rmtree(data / "text-tower")  # as before: through open_clip and torch (which exports it again)
    before, torch_loaded = query()
    assert torch_loaded and before == cold
    assert list((data / "text-tower").glob("*/meta.json"))
