"""A library remembers its models; a running server takes index jobs; the CLI's first-hour basics."""

import json
import time

import pytest
import tiny
from conftest import png_bytes, scene, write
from fastapi.testclient import TestClient
from live_server import wait_job
from typer.testing import CliRunner

from segsearch.settings import Settings

from segsearch.api.app import create_app
from segsearch.api.services import Services
from segsearch.cli import app

runner = CliRunner()
PROBLEM = "application/problem+json"


def lib(root, n, offset=0):
    colours = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 200, 30), (200, 30, 200), (30, 200, 200)]
    for i in range(offset, offset + n):
        write(root / f"img{i}.png", png_bytes(scene(color=colours[i % 6], box=(10 + 9 * i, 20, 50, 40))))
    return root


def env_for(tmp_path, **extra):
    """A user's environment: only the data dir and checkpoints; models come from flags or the record."""
    return {
        "SEGSEARCH_DATA": str(tmp_path / "data"),
        "SEGSEARCH_CHECKPOINTS": str(tmp_path / "ckpt"),
        "SEGSEARCH_OFFLINE": "1",
        **extra,
    }


def tiny_flags():
    out = ["--sam", "sam-test-tiny", "--clip", "clip-test-tiny"]
    for k, v in tiny.TINY_AMG.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def test_commands_without_model_flags_use_the_recorded_models(tmp_path):
    env = env_for(tmp_path)
    lib(tmp_path / "photos", 2)
    r = runner.invoke(app, ["index", str(tmp_path / "photos"), *tiny_flags(), "--json"], env=env)
    assert r.exit_code == 0, r.output
    # without flags the defaults would be sam-vit-b / clip-vit-b-32, not downloadable offline
    r = runner.invoke(app, ["search", "red", "--json"], env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["image_path"].startswith(str(tmp_path / "photos"))
    r = runner.invoke(app, ["doctor"], env=env)
    assert r.exit_code == 0 and "no drift found" in r.stdout
    r = runner.invoke(app, ["index", str(tmp_path / "photos"), "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == 2
    r = runner.invoke(app, ["info", "--json"], env=env)
    info = json.loads(r.stdout)
    assert info["library"]["sam"]["name"] == "sam-test-tiny" and info["library"]["clip"]["name"] == "clip-test-tiny"
    assert info["library"]["amg"]["points_per_side"] == tiny.TINY_AMG["points_per_side"]
    assert info["counts"]["indexed"] == 2 and info["last_run"]["status"] == "completed"
    assert info["size_bytes"]["total"] > 0
    r = runner.invoke(app, ["info"], env=env)
    assert "sam-test-tiny" in r.stdout and "2 indexed" in r.stdout


def test_switching_models_is_explicit(tmp_path):
    env = env_for(tmp_path)
    lib(tmp_path / "photos", 2)
    assert runner.invoke(app, ["index", str(tmp_path / "photos"), *tiny_flags()], env=env).exit_code == 0
    for flags in (["--clip", "clip-test-tiny-b"], ["--points-per-side", "3"], ["--crop-mode", "box"]):
        r = runner.invoke(app, ["index", str(tmp_path / "photos"), *flags], env=env)
        assert r.exit_code == 2, flags
        assert "indexed with SAM sam-test-tiny and CLIP clip-test-tiny" in r.output and "--reindex" in r.output
    r = runner.invoke(app, ["doctor", "--clip", "clip-test-tiny-b"], env=env)
    assert r.exit_code == 2 and "recorded models" in r.output
    # search with a CLIP model that has no vectors here lists the one that has
    r = runner.invoke(app, ["search", "red", "--clip", "clip-test-tiny-b"], env=env)
    assert r.exit_code == 2 and "holds vectors of clip-test-tiny" in r.output
    # --reindex switches: the record changes, the images are redone, and plain commands follow
    r = runner.invoke(
        app, ["index", str(tmp_path / "photos"), "--clip", "clip-test-tiny-b", "--reindex", "--json"], env=env
    )
    assert r.exit_code == 0 and json.loads(r.stdout)["indexed"] == 2, r.output
    info = json.loads(runner.invoke(app, ["info", "--json"], env=env).stdout)
    assert info["library"]["clip"]["name"] == "clip-test-tiny-b"
    assert info["library"]["sam"]["name"] == "sam-test-tiny"  # what was not given stays recorded
    assert [c["name"] for c in info["library"]["clips"]] == ["clip-test-tiny", "clip-test-tiny-b"]
    r = runner.invoke(app, ["search", "red", "--json"], env=env)
    assert r.exit_code == 0 and len(json.loads(r.stdout)) > 0
    # the earlier model's collection still exists: asking for it explicitly is allowed
    r = runner.invoke(app, ["search", "red", "--clip", "clip-test-tiny", "--json"], env=env)
    assert r.exit_code == 0, r.output


def test_a_failed_first_run_does_not_bind_the_library(tmp_path):
    env = env_for(tmp_path)
    lib(tmp_path / "photos", 1)
    r = runner.invoke(app, ["index", str(tmp_path / "photos")], env=env)  # defaults: no weights offline
    assert r.exit_code == 2 and "sam_vit_b_01ec64.pth" in r.output
    r = runner.invoke(app, ["index", str(tmp_path / "photos"), *tiny_flags(), "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.stdout)["indexed"] == 1, r.output


def test_a_server_without_its_models_says_which_and_why(tmp_path):
    s = Settings(data=tmp_path / "data", checkpoints=tmp_path / "ckpt", offline=True)  # clip-vit-b-32, not here
    with TestClient(base_url="http://127.0.0.1", app=create_app(s)) as c:
        deadline = time.monotonic() + 30  # the models load in the background; this one fails fast (offline)
        while (r := c.get("/readyz")).json().get("problem") == "models are loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.status_code == 503
        body = r.json()
        assert body["checks"]["models"] is False and "clip-vit-b-32" in body["problem"]
        assert "offline" in body["problem"]
        assert c.head("/readyz").status_code == 503 and c.head("/healthz").status_code == 200
        r = c.post("/v1/search", json={"text": "red car"})
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
        assert "open_clip_model.safetensors" in r.json()["detail"]
        r = c.get("/v1/info")
        assert r.status_code == 200 and r.json()["ready"] is False and "clip-vit-b-32" in r.json()["problem"]


@pytest.fixture
def served(tmp_path, tiny_embedder, tiny_sam):
    """A library indexed with the tiny models, and a server over it built from settings that name
    no model (it must take them from the record)."""
    env = env_for(tmp_path)
    lib(tmp_path / "photos", 2)
    assert runner.invoke(app, ["index", str(tmp_path / "photos"), *tiny_flags()], env=env).exit_code == 0
    s = Settings(data=tmp_path / "data", checkpoints=tmp_path / "ckpt", offline=True, roots=[tmp_path])
    services = Services(s, sam=tiny_sam)
    assert services.settings.clip == "clip-test-tiny" and services.settings.sam == "sam-test-tiny"
    yield services
    services.close()


def test_index_jobs_on_a_running_server(tmp_path, served):
    more = lib(tmp_path / "more", 3, offset=2)
    with TestClient(base_url="http://127.0.0.1", app=create_app(served.settings, services=served)) as c:
        r = c.post("/v1/jobs/index", json={"paths": [str(more)]})
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['job_id']}"
        job = wait_job(c, r.json()["job_id"])
        assert job["status"] == "completed", job
        assert job["progress"]["files_total"] == 3 and job["progress"]["files_done"] == 3
        assert job["summary"]["indexed"] == 3 and job["summary"]["stages"]["clip"] >= 0
        assert c.get("/v1/stats").json()["indexed"] == 5
        hits = c.post("/v1/search", json={"text": "x", "top_k": 10, "filters": {"path_prefix": str(more)}}).json()
        assert len({h["image_id"] for h in hits["hits"]}) == 3  # searchable at once, same process
        # Prometheus sees the requests, the library and what the job did
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        lines = metrics.text.splitlines()
        assert 'segsearch_images{status="indexed"} 5.0' in lines
        assert 'segsearch_index_images_total{outcome="indexed"} 3.0' in lines
        assert f"segsearch_index_segments_total {float(job['summary']['segments'])}" in lines
        assert 'segsearch_jobs{status="completed"} 1.0' in lines
        assert any(ln.startswith('http_requests_total{handler="/v1/search"') for ln in lines)
        # bad requests are the caller's: 422 problem+json naming the path
        r = c.post("/v1/jobs/index", json={"paths": [str(tmp_path / "nowhere")]})
        assert r.status_code == 422 and "nowhere" in r.json()["detail"]
        assert c.post("/v1/jobs/index", json={"paths": ["relative/dir"]}).status_code == 422
        assert c.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
        # cancelling: a queued job never runs
        served.jobs.stop()  # hold the worker so the next job stays queued
        job = c.post("/v1/jobs/index", json={"paths": [str(more)], "force": True}).json()
        r = c.delete(f"/v1/jobs/{job['job_id']}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        served.jobs.start()
        assert [j["status"] for j in c.get("/v1/jobs").json()] == ["cancelled", "completed"]  # newest first


def test_a_job_survives_a_server_restart(tmp_path, served):
    more = lib(tmp_path / "more", 2, offset=2)
    # a job the server had taken when it stopped: status 'running' in SQL, nothing done yet
    served.catalog.add_job("11111111-1111-1111-1111-111111111111", "index", {"paths": [str(more)], "force": False})
    served.catalog.update_job("11111111-1111-1111-1111-111111111111", status="running")
    with TestClient(
        base_url="http://127.0.0.1", app=create_app(served.settings, services=served)
    ) as c:  # the restarted server
        job = wait_job(c, "11111111-1111-1111-1111-111111111111")
        assert job["status"] == "completed" and job["summary"]["indexed"] == 2


def test_watch_keeps_a_folder_indexed(tmp_path, served):
    watched = lib(tmp_path / "photos", 0)
    with TestClient(
        base_url="http://127.0.0.1", app=create_app(served.settings, services=served, watch=[str(watched)])
    ) as c:
        deadline = time.monotonic() + 60
        write(watched / "new.png", png_bytes(scene(color=(230, 200, 30))))
        while c.get("/v1/stats").json()["indexed"] < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/v1/stats").json()["indexed"] == 3  # the new file, without anyone asking
        (watched / "img0.png").unlink()
        while c.get("/v1/stats").json()["images"] > 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/v1/stats").json()["images"] == 2  # the deleted one is forgotten
        hits = c.post("/v1/search", json={"text": "x", "top_k": 50}).json()["hits"]
        assert not any(h["image_path"].endswith("img0.png") for h in hits)


def test_cli_basics(tmp_path, monkeypatch):
    assert runner.invoke(app, ["--version"]).stdout.startswith("segsearch ")
    r = runner.invoke(app, ["index", "--help"], env={"COLUMNS": "200"})
    assert "default: ./segsearch-data" in r.stdout and "Meta's models 32" in r.stdout  # defaults shown
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in r.stdout and "--log-format" in r.stdout
    # a typo in an environment variable is said, not silently ignored
    r = runner.invoke(app, ["info", "--json"], env={**env_for(tmp_path), "SEGSEARCH_CLPI": "x"})
    assert r.exit_code == 0 and "SEGSEARCH_CLPI" in r.stderr and "SEGSEARCH_CLIP" in r.stderr


def test_toml_config_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SEGSEARCH_DATA", raising=False)
    user = tmp_path / "config" / "segsearch" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("top_k_unused = 1\nhnsw_ef = 512\nport = 9000\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "segsearch.toml").write_text("port = 9100\n")
    s = Settings(data=data)
    assert (s.hnsw_ef, s.port) == (512, 9100)  # the library's file over the user's
    monkeypatch.setenv("SEGSEARCH_PORT", "9200")
    assert Settings(data=data).port == 9200  # environment over files
    assert Settings(data=data, port=9300).port == 9300  # flags over everything


def test_a_cancelled_job_stays_cancelled_when_the_server_restarts(tmp_path, served):
    more = lib(tmp_path / "more", 12, offset=2)
    with TestClient(base_url="http://127.0.0.1", app=create_app(served.settings, services=served)) as c:
        job = c.post("/v1/jobs/index", json={"paths": [str(more)]}).json()
        deadline = time.monotonic() + 60
        while c.get(f"/v1/jobs/{job['job_id']}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert c.delete(f"/v1/jobs/{job['job_id']}").json()["status"] == "cancelled"
        assert served.catalog.get_job(job["job_id"]).status == "cancelled"  # recorded at once, in SQL
        served.jobs.stop()  # the server stops (SIGTERM) ...
        served.jobs.start()  # ... and starts again: the job is not run again
        time.sleep(1.5)
        after = c.get(f"/v1/jobs/{job['job_id']}").json()
        assert after["status"] == "cancelled" and after["progress"]["files_done"] < 12


def test_finished_jobs_expire(tmp_path, served):
    import datetime as dt

    from segsearch.store.schema import utcnow

    old, recent = "22222222-2222-2222-2222-222222222222", "33333333-3333-3333-3333-333333333333"
    for job_id, age in ((old, 40), (recent, 1)):
        served.catalog.add_job(job_id, "index", {"paths": []})
        served.catalog.update_job(job_id, status="completed", finished_at=utcnow() - dt.timedelta(days=age))
    with TestClient(base_url="http://127.0.0.1", app=create_app(served.settings, services=served)) as c:
        ids = [j["job_id"] for j in c.get("/v1/jobs").json()]
        assert recent in ids and old not in ids  # 30 days by default (SEGSEARCH_JOB_RETENTION_DAYS)
