"""Index jobs: the running server owns the store, so indexing while serving means handing the
work to it.

``segsearch index`` on a data directory whose embedded store is held by ``segsearch serve`` posts
``POST /v1/jobs/index`` and follows ``GET /v1/jobs/{id}`` (``segsearch.client``); ``serve
--watch`` posts jobs for changed folders. One job runs at a time, on one background thread, with
the server's own stores and models (CLIP shared with queries, SAM shared with ``/v1/segment``),
through the same pipeline and consistency protocol as ``segsearch index``.

Jobs are rows in SQL (migration 0003). A job queued or running when the server stops is queued
again when it starts: images already written stay indexed, the ones in flight were left
``pending`` and are redone, so a restart costs at most the images in flight.

Jobs are bounded: at most ``max_queued_jobs`` wait (more: 429), finished ones are deleted after
``job_retention_days``, and ``DELETE`` marks a job cancelled in SQL at once (so a restart never
runs it again) while the worker stops at its next check: every few hundred entries of the file
walk (``discover.Bounds``), before each image's model work and after each image, so within a
moment at any stage. A job posted over HTTP walks only under the server's roots, for at most
``discover_timeout_s`` and ``max_job_files`` files.

Queries come first: before each image's SAM pass and each CLIP batch the job waits (at most
``index_yield_s``, a setting) while search requests are in flight, so an index job does not
starve search.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

from segsearch.errors import SegsearchError, Stop
from segsearch.runtime import Models
from segsearch.store.sql import utcnow

log = logging.getLogger("segsearch.jobs")

# How often a running job's progress is written to SQL (GET reads the live copy in between).
PROGRESS_EVERY_S = 1.0
FINAL = ("completed", "failed", "cancelled")
EXPIRE_EVERY_S = 3600.0  # finished jobs past the retention time are deleted at start and at most hourly
CANCEL_WAIT_S = 2.0  # DELETE waits this long for the worker to stop (it checks every few hundred files or per image)


def gone_under(catalog, folders) -> list[str]:
    """Recorded paths under ``folders`` whose file no longer exists."""
    import os

    from segsearch.paths import on_disk, stored

    prefixes = [stored(f).rstrip("/") + "/" for f in folders]
    return [
        p for p, _ in catalog.all_paths() if any(p.startswith(x) for x in prefixes) and not os.path.lexists(on_disk(p))
    ]


def displayable(value):
    """A stored request with file names that are not valid UTF-8 shown escaped (``caf\\xe9.png``,
    ``segsearch.paths.stored``): they are kept losslessly in SQL, but JSON answers must be valid Unicode."""
    if isinstance(value, str):
        from segsearch.paths import stored

        return stored(value)
    if isinstance(value, list):
        return [displayable(v) for v in value]
    if isinstance(value, dict):
        return {displayable(k): displayable(v) for k, v in value.items()}
    return value


class QueryGate:
    """Counts query requests in flight; the index job waits for it to drain."""

    def __init__(self):
        self._n = 0
        self._cond = threading.Condition()

    def __enter__(self):
        with self._cond:
            self._n += 1

    def __exit__(self, *exc):
        with self._cond:
            self._n -= 1
            if self._n == 0:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> None:
        with self._cond:
            if self._n and timeout > 0:
                self._cond.wait_for(lambda: self._n == 0, timeout=timeout)


def _iso(t) -> str | None:
    return t.isoformat() if t is not None else None


class Jobs:
    def __init__(self, services):
        self.services = services
        self.gate = QueryGate()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cancel: set[str] = set()
        self._expired_at = 0.0
        self._user_cancel: set[str] = set()  # cancelled by a caller (stays cancelled when the server stops)
        self._live: dict[str, dict] = {}
        self.processed: dict[str, int] = {}  # images by outcome + segments, over this server's jobs (/metrics)
        self._lock = threading.Lock()
        self._models = None
        self._running: str | None = None
        self._thread: threading.Thread | None = None

    def live_progress(self) -> dict[str, dict]:
        """Progress of the running job(s), by job id (copies)."""
        with self._lock:
            return {k: dict(v) for k, v in self._live.items()}

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        catalog = self.services.catalog
        for job in catalog.jobs(["running"]):  # the server stopped while it ran: run it again
            catalog.update_job(job.id, status="queued")
        self.expire()
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="segsearch-jobs", daemon=True)
            self._thread.start()
        self._wake.set()

    def expire(self) -> int:
        """Delete finished jobs past the retention time."""
        import datetime as dt

        self._expired_at = time.monotonic()
        cutoff = utcnow() - dt.timedelta(days=self.services.settings.job_retention_days)
        return self.services.catalog.delete_jobs(FINAL, cutoff)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        with self._lock:
            self._cancel.update(self._live)  # leaves them for the next start (status set back below)
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=timeout)

    # --- API ---------------------------------------------------------------------------------------
    def submit(self, kind: str, request: dict, *, internal: bool = False) -> dict:
        """Queue a job. A caller's job past ``max_queued_jobs`` waiting is refused (429); the
        folder watcher's (``internal``) are not, it only follows the disk."""
        from segsearch.api.errors import ProblemError

        limit = self.services.settings.max_queued_jobs
        if not internal and self.services.catalog.job_counts().get("queued", 0) >= limit:
            raise ProblemError(
                429,
                "Too many queued jobs",
                f"{limit} jobs wait already (SEGSEARCH_MAX_QUEUED_JOBS); try again when some have run",
                headers={"Retry-After": "30"},
            )
        if time.monotonic() - self._expired_at > EXPIRE_EVERY_S:  # a server that never restarts forgets too
            self.expire()
        job_id = str(uuid.uuid4())
        self.services.catalog.add_job(job_id, kind, request)
        self._wake.set()
        return self.get(job_id)

    def get(self, job_id: str) -> dict | None:
        row = self.services.catalog.get_job(job_id)
        if row is None:
            return None
        with self._lock:
            live = dict(self._live.get(job_id) or {})
        progress = {**(row.progress or {}), **live}
        return {
            "job_id": row.id,
            "kind": row.kind,
            "status": row.status,
            "request": displayable(row.request),
            "progress": progress,
            "summary": row.summary,
            "error": row.error,
            "created_at": _iso(row.created_at),
            "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at),
        }

    def list(self, limit: int = 50, offset: int = 0) -> list[dict]:
        """Newest first."""
        rows = self.services.catalog.jobs(limit=limit, offset=offset, newest_first=True)
        return [j for j in (self.get(r.id) for r in rows) if j is not None]

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a queued or running job: recorded at once (a restart will not run it), and the
        worker stops at its next check (within a moment; this waits up to ``CANCEL_WAIT_S`` for it)."""
        row = self.services.catalog.get_job(job_id)
        if row is None:
            return None
        if row.status in ("queued", "running"):
            with self._lock:  # also for a queued one: the worker may be taking it right now
                self._cancel.add(job_id)
                self._user_cancel.add(job_id)
            self.services.catalog.update_job(job_id, status="cancelled", finished_at=utcnow())
            deadline = time.monotonic() + CANCEL_WAIT_S
            while time.monotonic() < deadline and self._running == job_id:
                time.sleep(0.02)
        return self.get(job_id)

    def check_cancelled(self) -> None:
        if self._running is not None and (self._running in self._cancel or self._stop.is_set()):
            raise Stop()

    # --- the worker thread ----------------------------------------------------------------------------
    def before_model_call(self) -> None:
        """Before each heavy model call of a job: stop there when the job was cancelled (a clean
        boundary: nothing half-recorded), else let in-flight queries finish first."""
        self.check_cancelled()
        self.gate.wait_idle(self.services.settings.index_yield_s)

    def models(self) -> Models:
        """The job's models: the server's CLIP and SAM instances, behind the query gate."""
        if self._models is None:
            svc = self.services
            self._models = Models(
                svc.settings,
                sam_spec=svc.sam_spec,
                clip_spec=svc.clip_spec,
                sam=svc.sam,
                embedder=svc.wait_for_embedder(None),
                guard=self.before_model_call,
            )
        return self._models

    def _loop(self) -> None:
        while not self._stop.is_set():
            queued = self.services.catalog.jobs(["queued"], limit=1)
            if not queued:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                self._run(queued[0])
            except Exception:  # noqa: BLE001 - the worker must outlive any one job
                log.exception("index job %s crashed", queued[0].id)

    def _run(self, job) -> None:
        library = self.services.library
        catalog = self.services.catalog
        if not catalog.update_job(job.id, if_status="queued", status="running", started_at=utcnow(), error=None):
            with self._lock:
                self._cancel.discard(job.id)
                self._user_cancel.discard(job.id)
            return  # cancelled between being picked and taken
        progress = {
            "files_total": None,
            "files_done": 0,
            "indexed": 0,
            "skipped": 0,
            "failed": 0,
            "segments": 0,
            "stages": {},
        }
        with self._lock:
            self._live[job.id] = progress
        self._running = job.id
        last_write = [time.monotonic()]
        indexer_ref: list = []

        def on_start(total: int) -> None:
            progress["files_total"] = total

        def on_image(outcome, _path) -> None:
            with self._lock:
                self.processed[outcome.status] = self.processed.get(outcome.status, 0) + 1
                self.processed["segments"] = self.processed.get("segments", 0) + outcome.segments
            progress["files_done"] += 1
            progress[outcome.status] = progress.get(outcome.status, 0) + 1
            progress["segments"] += outcome.segments
            if indexer_ref:
                progress["stages"] = {k: round(v, 3) for k, v in indexer_ref[0].stages.items()}
            if outcome.status != "indexed":  # recorded one by one (a written group is recorded whole)
                self.check_cancelled()
            if time.monotonic() - last_write[0] > PROGRESS_EVERY_S:
                catalog.update_job(job.id, progress=dict(progress))
                last_write[0] = time.monotonic()

        status, summary, error = "completed", None, None
        try:
            if job.kind == "repair":
                summary = self._repair()
            else:
                req = job.request
                removed = list(req.get("removed") or [])
                if req.get("prune"):  # a rescan after a lost watch batch: files gone under these folders
                    removed += gone_under(self.services.catalog, req["prune"])
                forgotten = library.forget(removed)
                gone = set(library.missing_inputs(req.get("paths") or []))  # vanished since the job was queued
                paths = [Path(p) for p in req.get("paths") or [] if p not in gone]
                summary = dict(forgotten) if removed else {}
                if paths:
                    from segsearch.roots import Bounds

                    s = self.services.settings
                    bounds = Bounds(
                        roots=None if req.get("owner") else self.services.roots,
                        max_files=s.max_job_files,
                        timeout_s=s.discover_timeout_s,
                        check=self.check_cancelled,
                    )
                    result = library.index(
                        paths,
                        force=bool(req.get("force")),
                        models=self.models(),
                        on_start=on_start,
                        progress=on_image,
                        indexer_hook=indexer_ref.append,
                        bounds=bounds,
                    )
                    summary.update(result.to_dict())
                    progress["stages"] = summary["stages"]
        except Stop:
            status = "queued" if self._stop.is_set() else "cancelled"
        except FileNotFoundError as exc:
            status, error = "failed", str(exc)
        except SegsearchError as exc:
            status, error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001
            log.exception("index job %s failed", job.id)
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                by_user = job.id in self._user_cancel
            if by_user:
                status, error = "cancelled", None
            elif self._stop.is_set() and status != "completed":
                status, error = "queued", None  # the server is stopping: run it again at the next start
            self._running = None
            with self._lock:
                self._live.pop(job.id, None)
                self._cancel.discard(job.id)
                self._user_cancel.discard(job.id)
            catalog.update_job(
                job.id,
                status=status,
                progress=progress,
                summary=summary,
                error=error,
                finished_at=utcnow() if status in FINAL else None,
            )

    def _repair(self) -> dict:
        return self.services.library.doctor(repair=True, models=self.models())
