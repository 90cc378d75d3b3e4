"""Finding and talking to the server that owns a data directory.

The embedded store (Qdrant Edge) is opened by one process at a time. While ``segsearch serve``
holds it, it announces itself in ``<data>/server.json`` (pid, host, URL); ``segsearch index``,
``search``, ``doctor`` and ``info`` on that data directory find the file, check that the process
is alive and answers ``/healthz``, and send their work to it over HTTP (httpx) instead of stopping
with "in use". The file is removed when the server stops; a file left by a killed server names a
dead pid and is ignored.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from segsearch.errors import ConfigError, SegsearchError, StorageError
from segsearch.settings import Settings

ANNOUNCEMENT = "server.json"
# A server that holds the store may still be loading its models before it answers HTTP: wait this
# long for it rather than report "in use".
STARTUP_WAIT_S = 60.0


def announce(settings: Settings) -> Path:
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    path = Path(settings.data) / ANNOUNCEMENT
    tmp = path.with_name(f".{ANNOUNCEMENT}.{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "url": f"http://{host}:{settings.port}"}))
    os.replace(tmp, path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class ServerClient:
    """HTTP calls to a running ``segsearch serve``; errors become SegsearchErrors with the
    server's problem+json detail."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0):
        import httpx

        headers = {"X-API-Key": api_key} if api_key else {}
        self.url = url
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    @classmethod
    def find(cls, settings: Settings) -> ServerClient | None:
        """The server announced in the data directory, if one runs (embedded store only: a
        server backend is shared by design and needs no hand-off)."""
        if settings.vector_backend != "embedded":
            return None
        path = Path(settings.data) / ANNOUNCEMENT
        try:
            ann = json.loads(path.read_text())
            pid, url = int(ann["pid"]), str(ann["url"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if ann.get("host") != socket.gethostname() or not _alive(pid) or pid == os.getpid():
            return None
        client = cls(url, settings.api_key)
        deadline = time.monotonic() + STARTUP_WAIT_S
        while True:
            try:
                if client.http.get("/healthz", timeout=2).status_code == 200:
                    return client
            except Exception:  # noqa: BLE001 - not answering (yet)
                pass
            if time.monotonic() > deadline or not _alive(pid):
                client.close()
                return None
            time.sleep(0.25)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw) -> dict | list:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise StorageError(f"the server at {self.url} (which holds this data directory) did not answer: "
                               f"{exc}") from exc
        if r.status_code in (401, 403):
            raise ConfigError(f"the server at {self.url} holds this data directory and refused the request "
                              f"({r.status_code}): set SEGSEARCH_API_KEY to its key")
        if r.status_code >= 400:
            try:
                body = r.json()
                detail = body.get("detail") or body.get("title")
            except ValueError:
                detail = r.text[:500]
            err = ConfigError if r.status_code in (404, 409, 422) else SegsearchError
            raise err(f"the server at {self.url} answered {r.status_code}: {detail}")
        return r.json()

    def info(self) -> dict:
        return self._call("GET", "/v1/info")

    def submit_index(self, paths: list[str], force: bool) -> dict:
        return self._call("POST", "/v1/jobs/index", json={"paths": paths, "force": force})

    def submit_repair(self) -> dict:
        return self._call("POST", "/v1/jobs/repair")

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self._call("DELETE", f"/v1/jobs/{job_id}")

    def doctor(self) -> dict:
        return self._call("GET", "/v1/doctor")

    def search(self, body: dict) -> dict:
        return self._call("POST", "/v1/search", json=body)

    def wait(self, job_id: str, on_progress=None, poll_s: float = 0.3) -> dict:
        """Follow a job until it ends; Ctrl-C cancels it on the server."""
        try:
            while True:
                job = self.job(job_id)
                if on_progress is not None:
                    on_progress(job)
                if job["status"] in ("completed", "failed", "cancelled"):
                    return job
                time.sleep(poll_s)
        except KeyboardInterrupt:
            self.cancel(job_id)
            raise
