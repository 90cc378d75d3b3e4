"""A throwaway PostgreSQL server for the tests that run the SQL layer on PostgreSQL.

``SEGSEARCH_TEST_PG_URL`` (e.g. ``postgresql+psycopg://user:pw@host:5432/postgres``) points the
tests at an existing server. Otherwise, when the Debian ``postgresql`` package is installed
(``.ci/run`` installs it), a private cluster is created under a temporary folder, listening on a
free loopback port, and removed at the end of the session. Each test gets a fresh database.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A PostgreSQL cluster in a temporary folder (as user ``postgres`` when running as root)."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="segsearch-pg-"))
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str) -> None:
        r = subprocess.run([*self._as, *cmd], capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stdout}\n{r.stderr}")

    def start(self) -> PgServer:
        initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        if self._as:
            shutil.chown(self.tmp, "postgres")
        data = self.tmp / "data"
        self._run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.tmp} -c fsync=off -c max_connections=200"
        self._run(pg_ctl, "-D", str(data), "-o", opts, "-l", str(self.tmp / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        pg_ctl = _bin("pg_ctl")
        try:
            if pg_ctl and (self.tmp / "data").exists():
                self._run(pg_ctl, "-D", str(self.tmp / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def server_url() -> tuple[str, PgServer | None]:
    """(admin URL, the server we started or None). Raises when no PostgreSQL is available."""
    url = os.environ.get("SEGSEARCH_TEST_PG_URL")
    if url:
        return url, None
    server = PgServer().start()
    return server.url, server


def _admin(url: str, sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def create_database(admin_url: str) -> str:
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(admin_url, f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    for _ in range(3):
        try:
            _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except Exception:  # noqa: BLE001 - a closing connection; try again
            time.sleep(0.2)
