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


# Settings that decide what a library's segments are (what the server's record fixes).
MODEL_FIELDS = (
    "sam",
    "clip",
    "clip_arch",
    "points_per_side",
    "pred_iou_thresh",
    "stability_score_thresh",
    "box_nms_thresh",
    "crop_n_layers",
    "min_mask_region_area",
    "crop_mode",
    "crop_padding",
    "min_segment_area",
    "video_fps",
    "min_track_seconds",
    "video_keyframe_seconds",
    "track_vector",
)
HIT_FIELDS = (
    "segment_id",
    "image_id",
    "image_path",
    "kind",
    "bbox",
    "area",
    "area_frac",
    "score",
    "predicted_iou",
    "stability_score",
    "tags",
    "start_s",
    "end_s",
    "best_s",
)


def _same_model(kind: str, name: str, rec) -> bool:
    from segsearch.models import get_clip_spec, get_sam_spec

    entry = rec.sam if kind == "sam" else rec.clip
    try:
        spec = get_sam_spec(name) if kind == "sam" else get_clip_spec(name)
    except SegsearchError:
        return False
    return spec.fingerprint == entry.get("fingerprint")


def announce(settings: Settings, owner_token: str | None = None) -> Path:
    """Write ``server.json`` (mode 0600: its ``owner`` token lets the data directory's owner hand
    index jobs to the server with paths outside its roots, and admin access without the admin key)."""
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    path = Path(settings.data) / ANNOUNCEMENT
    tmp = path.with_name(f".{ANNOUNCEMENT}.{os.getpid()}")
    body = {"pid": os.getpid(), "host": socket.gethostname(), "url": f"http://{host}:{settings.port}"}
    if owner_token:
        body["owner"] = owner_token
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(body))
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

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0, owner: str | None = None):
        import httpx

        headers = {"X-API-Key": api_key} if api_key else {}
        if owner:
            headers["X-Segsearch-Owner"] = owner
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
        owner = ann.get("owner") if isinstance(ann.get("owner"), str) else None
        client = cls(url, settings.admin_key or settings.api_key, owner=owner)
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
            raise StorageError(
                f"the server at {self.url} (which holds this data directory) did not answer: {exc}"
            ) from exc
        if r.status_code in (401, 403):
            raise ConfigError(
                f"the server at {self.url} holds this data directory and refused the request "
                f"({r.status_code}): set SEGSEARCH_API_KEY to its key"
            )
        if r.status_code >= 400:
            try:
                body = r.json()
                detail = body.get("detail") or body.get("title")
            except ValueError:
                detail = r.text[:500]
            err = ConfigError if r.status_code in (404, 409, 422) else SegsearchError
            raise err(f"the server at {self.url} answered {r.status_code}: {detail}")
        return r.json() if r.status_code != 204 else {}

    def call(self, method: str, path: str, **kw) -> dict | list:
        """Any /v1 request (errors as for every call: 4xx -> ConfigError with the server's detail)."""
        return self._call(method, path, **kw)

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

    # --- what the CLI hands over ------------------------------------------------------------------
    def check_models(self, settings: Settings, *, reindex: bool = False) -> None:
        """The server indexes and searches with its library's models: asking it for others (or to
        switch) is a usage error."""
        from segsearch import record

        given = settings.model_fields_set & set(MODEL_FIELDS)
        if not given and not reindex:
            return
        rec = record.Recorded(**self.info()["library"])
        recalled = record.recalled(rec)
        differ = [
            k
            for k in given
            if k in recalled
            and str(recalled[k]) != str(getattr(settings, k))
            and not (k in ("sam", "clip") and _same_model(k, getattr(settings, k), rec))
        ]
        if differ or reindex:
            asked = f"; asked for {', '.join(f'{k}={getattr(settings, k)}' for k in sorted(differ))}" if differ else ""
            raise ConfigError(
                f"segsearch serve (at {self.url}) holds this data directory and works with {record.describe(rec)}"
                f"{asked}. Stop the server to switch models (`segsearch index PATHS --reindex`), or drop those flags."
            )

    def index(
        self, settings: Settings, paths: list[str], *, force: bool = False, reindex: bool = False, on_progress=None
    ) -> dict:
        """``segsearch index`` through the server: the run summary, as a local run returns it.
        ``paths`` as the user gave them (relative to this process's folder)."""
        self.check_models(settings, reindex=reindex)
        absolute = [os.path.abspath(os.path.expanduser(p)) for p in paths]  # globs too: the server expands them
        job = self.wait(self.submit_index(absolute, force)["job_id"], on_progress)
        if job["status"] != "completed":
            raise SegsearchError(
                f"the server's index job {job['job_id']} {job['status']}: {job.get('error') or ''}".strip()
            )
        return job["summary"]

    def search_page(
        self, settings: Settings, query: str | None, image, *, filters: dict, group_by_image: bool = False, **ask
    ) -> dict:
        """``segsearch search`` through the server: {hits, groups, next_offset}, hits shaped as a
        local search prints them. ``ask``: top_k, negative_text, offset, score_threshold."""
        import base64

        if "clip" in settings.model_fields_set:
            self.check_models(settings)
        body: dict = {"filters": filters, "group_by_image": group_by_image}
        body.update({k: v for k, v in ask.items() if v is not None})
        if image is not None:
            try:
                body["image_b64"] = base64.b64encode(Path(image).read_bytes()).decode()
            except OSError as exc:
                raise ConfigError(f"cannot use --image {image}: {exc}") from exc
        else:
            body["text"] = query

        def shaped(h):
            return {**{k: h.get(k) for k in HIT_FIELDS}, "paths": [h["image_path"]] if h.get("image_path") else []}

        got = self.search(body)
        groups = got.get("groups")
        if groups is not None:
            keep = ("image_id", "image_path", "score")
            groups = [{**{k: g[k] for k in keep}, "hits": [shaped(h) for h in g["hits"]]} for g in groups]
        return {"hits": [shaped(h) for h in got["hits"]], "groups": groups, "next_offset": got.get("next_offset")}

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
