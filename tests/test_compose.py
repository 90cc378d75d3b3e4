"""docker-compose.yml and the Dockerfile, checked by parsing (Docker cannot run on our machines):
the services a user brings up, their ports, volumes and healthchecks, and that the environment
they pass wires segsearch to the right services through settings that exist."""

import re
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from segsearch.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_of(service) -> dict:
    return {k: str(v) for k, v in service["environment"].items()}


def published(service) -> set[int]:
    return {int(str(p).split(":")[-1]) for p in service.get("ports", [])}


def test_services_ports_volumes_and_healthchecks(compose):
    s = compose["services"]
    assert {"qdrant", "postgres", "api", "indexer"} <= set(s)
    assert s["qdrant"]["image"].startswith("qdrant/qdrant")
    assert published(s["qdrant"]) == {6333, 6334}  # REST and gRPC
    assert published(s["postgres"]) == {5432}
    for name, mount in (("qdrant", "/qdrant/storage"), ("postgres", "/var/lib/postgresql/data")):
        vols = {v.split(":")[1]: v.split(":")[0] for v in s[name]["volumes"]}
        assert vols[mount] in compose["volumes"], f"{name} keeps its data in a named volume"
    for name in ("qdrant", "postgres", "api"):
        assert s[name]["healthcheck"]["test"], name
    assert "6333" in " ".join(s["qdrant"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(s["postgres"]["healthcheck"]["test"])


def test_segsearch_services_are_wired_to_qdrant_and_postgres(compose):
    s = compose["services"]
    pg_env = s["postgres"]["environment"]
    fields = set(Settings.model_fields)
    for name in ("api", "indexer", "indexer-gpu"):
        svc = s[name]
        assert svc["build"] == "." and (ROOT / "Dockerfile").is_file()
        assert {k: v["condition"] for k, v in svc["depends_on"].items()} == {
            "qdrant": "service_healthy",
            "postgres": "service_healthy",
        }
        env = env_of(svc)
        unknown = {k for k in env if k.startswith("SEGSEARCH_") and k.removeprefix("SEGSEARCH_").lower() not in fields}
        assert not unknown, f"{name} sets variables segsearch does not read: {unknown}"
        assert env["SEGSEARCH_VECTOR_BACKEND"] == "server"
        assert re.fullmatch(r"http://qdrant:6333", env["SEGSEARCH_QDRANT_URL"])
        url = make_url(re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", env["SEGSEARCH_DATABASE_URL"]))
        assert url.drivername == "postgresql+psycopg" and url.host == "postgres" and url.port == 5432
        assert url.username == pg_env["POSTGRES_USER"] and url.database == pg_env["POSTGRES_DB"]
        assert url.password == re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", pg_env["POSTGRES_PASSWORD"])
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert mounts[env["SEGSEARCH_CHECKPOINTS"]] == "./checkpoints"  # model weights from the repo folder


def test_api_listens_where_it_is_published_and_indexers_pick_a_device(compose):
    s = compose["services"]
    cmd = s["api"]["command"]
    assert cmd[0] == "serve" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert published(s["api"]) == {int(cmd[cmd.index("--port") + 1])}
    assert "/readyz" in " ".join(s["api"]["healthcheck"]["test"])
    assert s["indexer"]["command"][0] == "index" and env_of(s["indexer"])["SEGSEARCH_DEVICE"] == "cpu"
    gpu = s["indexer-gpu"]
    assert env_of(gpu)["SEGSEARCH_DEVICE"] == "auto" and gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_dockerfile_installs_torch_first_and_every_package_dir():
    text = (ROOT / "Dockerfile").read_text()
    torch_at = text.index("pip install torch==")
    assert (
        torch_at
        < text.index("pip install --no-build-isolation sam2")
        < text.index("pip install '.[postgres,ray,sam2]'")
    )
    import tomllib

    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in package_dirs.values():
        assert re.search(rf"^COPY {folder} ", text, re.M), f"Dockerfile does not copy {folder}/"
    assert 'ENTRYPOINT ["segsearch"]' in text


def test_prometheus_scrapes_the_api_when_asked(compose):
    prom = compose["services"]["prometheus"]
    assert prom["profiles"] == ["monitoring"] and published(prom) == {9090}
    config = yaml.safe_load(compose["configs"][prom["configs"][0]["source"]]["content"])
    job = config["scrape_configs"][0]
    api_port = published(compose["services"]["api"]).pop()
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == [f"api:{api_port}"]
