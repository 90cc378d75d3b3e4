"""The schema comes from Alembic migrations and matches the SQLAlchemy models, on SQLite and
PostgreSQL alike (``sql_url`` runs each test on both)."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from segsearch.store.sql import Base, Catalog, make_engine, migrate


def test_migrations_create_the_models_schema(sql_url):
    engine = make_engine(sql_url)
    migrate(engine)
    assert set(inspect(engine).get_table_names()) >= {"images", "image_paths", "segments", "runs", "alembic_version"}
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    engine.dispose()


def test_downgrade_and_upgrade_again(sql_url):
    engine = make_engine(sql_url)
    migrate(engine)
    from importlib.resources import files

    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("segsearch.migrations")))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert "images" not in inspect(engine).get_table_names()
    migrate(engine)
    assert "images" in inspect(engine).get_table_names()
    engine.dispose()


def test_register_file_reports_orphans(sql_url):
    c = Catalog.open(sql_url)
    assert c.register_file("/p/a.jpg", "h1", 10, 1) == []
    assert c.register_file("/p/b.jpg", "h1", 10, 1) == []  # same bytes, second path
    assert c.register_file("/p/a.jpg", "h2", 11, 2) == []  # h1 still has /p/b.jpg
    assert c.register_file("/p/b.jpg", "h3", 12, 3) == ["h1"]  # h1 lost its last path
    assert c.image_paths("h2") == ["/p/a.jpg"]
    assert c.counts()["images"] == 3
    c.delete_image("h1")
    assert c.counts() == {"images": 2, "indexed": 0, "pending": 2, "failed": 0, "segments": 0, "paths": 2, "videos": 0}
    c.close()


def test_several_processes_opening_a_new_database_at_once(sql_url):
    """N indexers started together on an empty database (docker compose --scale indexer=3): each
    runs the migrations on open, and none may fail on another's half-created schema."""
    import subprocess
    import sys
    import time

    code = (
        "import sys, time; from segsearch.store.sql import Catalog; "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); Catalog.open(sys.argv[1]).close()"
    )
    start_at = str(time.time() + 4)  # imports done first, then all open at the same instant
    procs = [
        subprocess.Popen([sys.executable, "-c", code, sql_url, start_at], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [err for p in procs for _, err in [p.communicate(timeout=120)] if p.returncode != 0]
    assert not errors, errors
    c = Catalog.open(sql_url)
    with c.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None
    c.close()


def test_several_indexers_record_the_library_at_once(sql_url):
    """Indexers started together on a new library all record its models (the same ones) at the
    same instant: none may fail on another's row (seen once in CI: a UniqueViolation)."""
    import threading

    catalogs = [Catalog.open(sql_url) for _ in range(4)]
    start, errors = threading.Barrier(4), []

    def record(c, i):
        start.wait()
        try:
            for _ in range(5):
                c.set_library({"sam": {"name": "sam-x", "writer": i}, "clip": {"name": "clip-x"}})
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(c, i)) for i, c in enumerate(catalogs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rec = catalogs[0].library()
    assert rec["clip"] == {"name": "clip-x"} and rec["sam"]["writer"] in range(4)
    for c in catalogs:
        c.close()
