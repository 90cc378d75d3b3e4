"""Wire the stages together: discover -> read+hash -> decode -> masks -> crops -> CLIP -> store.

Streaming: files are read, hashed and decoded ahead of the model in worker threads (``reader``);
SAM runs on the calling thread (or, with ``SEGSEARCH_SAM_PROCESSES=N`` on a CPU, in N worker
processes, ``sam_procs``); crops of several images are embedded together in CLIP batches and
their vectors written in one store call (a "write group", ``writer``), bounded by
``write_group_images`` / ``write_group_crops``.

Consistency protocol for one image (``Indexer.prepare`` then ``Writer.write_group``):

1. SQL: image marked ``pending`` for the current pipeline fingerprint.
2. Masks, crops and vectors are computed in memory.
3. Vectors: stale points of the image are deleted, the new ones upserted (durable on return).
4. SQL, one transaction: old segment rows replaced by the new ones, image marked ``indexed``.

A crash anywhere before 4 leaves the image ``pending`` (with a write group, every image of the
group not yet committed); the next run redoes it. Segment ids are deterministic, and step 3 first
removes whatever an interrupted attempt left, so a redo never duplicates and never leaves orphan
vectors.

Several indexers at once (same database and vector server) claim each image first (``claims``):
an image another live indexer holds is deferred; once its own pass is over, an indexer waits on
its deferred images until each is indexed by its holder or the holder's lease expires (it
crashed), and then takes it over. So N indexers walking the same folders split the model work,
no image is done twice, and a crashed indexer's images are still done.

The per-image surface (``look``, ``read``, ``begin_image``, ``prepare``, ``add``/``flush``,
``fail``) is what both the local pass below and the Ray engine (``ray_engine``) drive.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import partial
from pathlib import Path

from segsearch.errors import ImageError, SegsearchError, Stop
from segsearch.images import DecodedImage, check_sam_view
from segsearch.models import amg_params
from segsearch.runtime import Models, Stores
from segsearch.settings import Settings
from segsearch.store.sql import as_utc, utcnow
from segsearch.video import VideoInfo

from segsearch.indexer import claims
from segsearch.indexer.amg import mask_generator_for, sam_stage_times
from segsearch.indexer.reader import Look, Read, Reader, look
from segsearch.indexer.results import Deferred, Outcome, RunSummary, StageTimes
from segsearch.indexer.sam_procs import sam_workers, single_threaded
from segsearch.indexer.videos import prepare_video
from segsearch.indexer.working import generate_photo
from segsearch.indexer.writer import Prepared, Writer, build_segments

Record = Callable[[Outcome, Path], None]
log = logging.getLogger("segsearch.indexer")

# A run starts SAM processes (see sam_procs) only with at least this many files still to come:
# each is a fresh interpreter importing PyTorch (about 2 s, in the background while SAM runs
# here), which a handful of photos does not win back.
PROCESSES_MIN_LEFT = 8

__all__ = ["Indexer", "Outcome", "RunSummary", "Stop"]


def _log_outcome(outcome: Outcome, path: Path) -> None:
    """-v: what was skipped or failed, and why; -vv: every image."""
    fields = {"event": "file", "path": str(path), "status": outcome.status}
    if outcome.status == "indexed":
        log.debug(
            "indexed %s: %d segments",
            path,
            outcome.segments,
            extra={"fields": {**fields, "segments": outcome.segments}},
        )
    elif outcome.status == "skipped":
        why = outcome.error or "unchanged since it was indexed with these models and settings"
        log.info("skipped %s: %s", path, why, extra={"fields": {**fields, "reason": why}})
    else:
        log.info("failed %s: %s", path, outcome.error, extra={"fields": {**fields, "reason": outcome.error}})


class Indexer:
    def __init__(self, settings: Settings, stores: Stores, models: Models):
        self.settings = settings
        self.stores = stores
        self.catalog = stores.catalog
        self.models = models
        self.worker = settings.worker_id or claims.default_worker_id()
        self.times = StageTimes()
        self.reader = Reader(settings, self.times)
        self.writer = Writer(settings, stores, models, self.worker, self.times)
        self._done: set[str] = set()  # image ids handled in this run (same bytes at two paths)
        self._group: list[Prepared] = []
        self._run_started = None  # wall clock of the run start (for --force with several indexers)
        self._fp: dict[str, str] = {}  # image id -> its fingerprint (a video's includes the sampling)
        self._procs = None  # this run's SAM processes, once started (sam_procs)
        self._left = 0  # files of this run not yet looked at
        self._workers = 1

    @property
    def stages(self) -> dict[str, float]:
        """Seconds per stage so far in this run."""
        return dict(self.times.seconds)

    # --- one run -------------------------------------------------------------------------------
    def run_paths(self, paths: list[Path], *, force: bool = False, progress: Record | None = None) -> RunSummary:
        started = time.perf_counter()
        summary = RunSummary()
        summary.run_id = self.catalog.start_run(
            {
                "sam": self.models.sam_spec.name,
                "clip": self.models.clip_spec.name,
                "fingerprint": self.models.fingerprint,
                "collection": self.models.collection,
                "force": force,
                "amg": amg_params(self.settings),
                "crop": self.settings.crop_params(),
                "inputs": len(paths),
            }
        )
        s = self.settings
        log.info(
            "index run %s: %d inputs; SAM %s (%s masks), CLIP %s, on %s (%s run); masks %s; crops %s",
            summary.run_id,
            len(paths),
            self.models.sam_spec.name,
            s.amg,
            self.models.clip_spec.name,
            s.resolved_device(),
            s.engine,
            amg_params(s),
            s.crop_params(),
            extra={
                "fields": {
                    "event": "run_start",
                    "run_id": summary.run_id,
                    "inputs": len(paths),
                    "sam": self.models.sam_spec.name,
                    "clip": self.models.clip_spec.name,
                    "mask_engine": s.amg,
                    "engine": s.engine,
                    "amg": amg_params(s),
                    "crop": s.crop_params(),
                }
            },
        )
        self._done, self._group = set(), []
        self._left, self._workers = len(paths), sam_workers(self.models)
        self.times.reset()  # shared with the reader and the writer
        self._run_started = utcnow()
        status = "crashed"

        def record(outcome: Outcome, path: Path) -> None:
            summary.add(outcome, path)
            _log_outcome(outcome, path)
            if progress:
                progress(outcome, path)

        try:
            with claims.Heartbeat(self.catalog, self.worker, self.settings.claim_lease_s):
                if self.settings.engine == "ray":
                    from segsearch.indexer.ray_engine import ray_pass

                    deferred = ray_pass(self, paths, force, record)
                else:
                    deferred = self._pass(self.reader.prefetch(paths, lambda p: self.look(p, force)), force, record)
                while deferred:  # images other indexers hold: wait for them, take over a dead one's
                    deferred = self._revisit(deferred, force, record)
                if summary.indexed:
                    t0 = time.perf_counter()
                    self.stores.vectors.optimize()  # embedded store: build/refresh the HNSW index once per run
                    self.times.add("optimize", time.perf_counter() - t0)
            status = "completed"
        except (KeyboardInterrupt, Stop):
            status = "interrupted"
            raise
        except SegsearchError:  # models that cannot be loaded, a store gone: the run failed, said so
            status = "failed"
            raise
        finally:
            self._close_procs()
            summary.seconds = time.perf_counter() - started
            summary.stages = self.stages
            log.info(
                "index run %s %s: %d indexed, %d skipped, %d failed, %d segments in %.1f s; stages (s): %s",
                summary.run_id,
                status,
                summary.indexed,
                summary.skipped,
                summary.failed,
                summary.segments,
                summary.seconds,
                ", ".join(f"{k} {v:.2f}" for k, v in summary.stages.items()),
                extra={"fields": {"event": "run_end", "status": status, **summary.to_dict()}},
            )
            try:
                self.catalog.finish_run(
                    summary.run_id,
                    status=status,
                    indexed=summary.indexed,
                    skipped=summary.skipped,
                    failed=summary.failed,
                    segments=summary.segments,
                    failures=[asdict(f) for f in summary.failures],
                )
            except Exception:  # noqa: BLE001 - never hide the original error
                if status == "completed":
                    raise
        return summary

    def _pass(self, reads: Iterable[tuple[Path, Outcome | Read]], force: bool, record: Record) -> list[Deferred]:
        """Admit each read file, prepare it and write it in groups; returns the deferred images.
        Photos go to the SAM processes once they are up (``sam_procs``), a window of
        ``2 x workers`` in flight, and are written in the order they were read."""
        deferred: list[Deferred] = []
        window: deque = deque()
        for path, read in reads:
            self._left -= 1
            begun = self.begin_image(path, read, force)
            if isinstance(begun, Deferred):
                deferred.append(begun)
                continue
            if isinstance(begun, Outcome):
                record(begun, path)
                continue
            procs = self._procs_for(read)
            if procs is None:
                self._queue(path, self._prepare_read(path, read), record)
                continue
            job = self._fail_alone(read.image_id, read.decoded, partial(self._submit, procs, read))
            window.append((path, read, job))
            while len(window) > 2 * procs.workers:
                self._collect(*window.popleft(), record)
        while window:
            self._collect(*window.popleft(), record)
        self.flush(record)
        return deferred

    def _procs_for(self, read: Read):
        """The run's SAM processes if they are up, for a photo; None: SAM runs here. They are
        started (in the background) at a photo that needs SAM with ``PROCESSES_MIN_LEFT`` or more
        files still to come."""
        if not isinstance(read.decoded, DecodedImage) or self._workers <= 1:
            return None
        if self._procs is None and self._left >= PROCESSES_MIN_LEFT:
            from segsearch.indexer.sam_procs import SamProcesses

            t0 = time.perf_counter()  # (loads the models here first, if no photo did yet)
            self._procs = SamProcesses(self.models, self._workers)
            self.times.add("load_models", time.perf_counter() - t0)
        if self._procs is None:
            return None
        try:
            return self._procs if self._procs.ready() else None
        except Exception as exc:  # noqa: BLE001 - no worker processes here: SAM stays in this process
            log.warning("SAM worker processes could not start (%s); SAM runs in this process", exc)
            self._close_procs()
            self._workers = 1
            return None

    def _submit(self, procs, read: Read):
        """Step 1 here, masks and crops in a SAM process: the image's future."""
        decoded = read.decoded
        check_sam_view(decoded.width, decoded.height, int(self.models.sam_spec.config["image_size"]))
        if self.models.guard is not None:
            self.models.guard()
        self.mark_pending(read.image_id)
        return procs.submit(read.image_id, self.models.fingerprint, decoded)

    def _collect(self, path: Path, read: Read, job, record: Record) -> None:
        """A SAM process's result for an image, into its write group (or its failure recorded). If
        the processes died, the image is done again here and the next images get new processes."""
        from concurrent.futures.process import BrokenProcessPool

        iid, decoded = read.image_id, read.decoded
        if not isinstance(job, Outcome) and isinstance(job.exception(), BrokenProcessPool):
            self._close_procs()
            self._queue(path, self._prepare_read(path, read), record)
            return
        got = job if isinstance(job, Outcome) else self._fail_alone(iid, decoded, job.result)
        if isinstance(got, Outcome):
            record(got, path)
            return
        segments, crops, times = got
        for stage, seconds in times.items():
            self.times.add(stage, seconds)
        meta = decoded.meta
        prepared = Prepared(path, iid, decoded.width, decoded.height, decoded.format, segments, crops, meta=meta)
        with single_threaded():  # (a full write group is embedded and written now)
            self.add(prepared, record)

    def _close_procs(self) -> None:
        procs, self._procs = self._procs, None
        if procs is not None:
            procs.close()

    def _queue(self, path: Path, result: Prepared | Outcome, record: Record) -> None:
        if isinstance(result, Outcome):
            record(result, path)
        else:
            self.add(result, record)

    def _revisit(self, deferred: list[Deferred], force: bool, record: Record) -> list[Deferred]:
        """One round over the deferred images: done by their holder -> skipped; holder gone ->
        read again and go through the normal stages; still held -> wait and keep."""
        free, held = [], []
        for d in deferred:
            fp = self.models.fingerprint_for(d.path)
            image = self.catalog.get_image(d.image_id)
            if (
                image is not None
                and image.fingerprint == fp
                and image.status in ("indexed", "failed")
                and (not force or as_utc(image.updated_at) >= self._run_started)
            ):
                record(Outcome("skipped"), d.path)  # its holder finished it (and reports it)
            elif claims.held_by_other(self.catalog, d.image_id, self.worker):
                held.append(d)
            else:
                free.append(d)
        if free:
            held += self._pass(((d.path, self.read(d.path, force)) for d in free), force, record)
        if held and not free:
            time.sleep(min(1.0, self.settings.claim_lease_s / 10))
        return held

    # --- the per-image surface ---------------------------------------------------------------------
    def index_file(self, path: Path, *, force: bool = False) -> Outcome:
        """Index one file through the same stages as a run (no prefetch, a group of one)."""
        read = self.read(path, force)
        begun = self.begin_image(path, read, force)
        if isinstance(begun, Deferred):
            return Outcome("skipped", error="another indexer is working on it")
        result = begun if isinstance(begun, Outcome) else self._prepare_read(path, read)
        if isinstance(result, Outcome):
            return result
        return self.writer.write_group([result])[0][1]

    def look(self, path: Path, force: bool) -> Outcome | Look:
        return look(self.catalog, path, self.models.fingerprint_for(path), force)

    def read(self, path: Path, force: bool, *, decode: bool = True) -> Outcome | Read:
        return self.reader.read(path, self.look(path, force), decode=decode)

    def begin_image(self, path: Path, read: Outcome | Read, force: bool) -> Outcome | Deferred | None:
        """Catalog bookkeeping for a read file (its bytes hashed; decoding not needed): the path is
        registered, and the image skipped (an Outcome), left to another indexer (a Deferred), or
        claimed by this one (None: the caller computes it)."""
        if isinstance(read, Outcome):
            return read
        fp, collection = self.models.fingerprint_for(path), self.models.collection
        iid, known = read.image_id, read.look.known
        self._fp[iid] = fp
        for orphan in self.catalog.register_file(str(path), iid, read.size, read.look.stat.st_mtime_ns):
            self.writer.remove_image(orphan)  # the file changed: its old bytes have no path left

        image = self.catalog.get_image(iid)
        if image.status == "indexed" and image.fingerprint == fp and (not force or iid in self._done):
            # same bytes as an image already indexed (another path, or a touched file)
            if known is None or known[0].image_id != iid:
                self.stores.vectors.set_image_paths(collection, iid, self.catalog.image_paths(iid))
            return Outcome("skipped")
        if image.status == "failed" and iid in self._done:
            return Outcome("failed", error=image.error)
        if iid in self._done:  # same bytes at two paths in one write group: the first one indexes it
            return Outcome("skipped")

        if not claims.claim(self.catalog, iid, self.worker, self.settings.claim_lease_s):
            return Deferred(path, iid)  # another indexer is on it
        image = self.catalog.get_image(iid)  # it may have finished between our look and our claim
        if (
            image.status == "indexed"
            and image.fingerprint == fp
            and (not force or as_utc(image.indexed_at) >= self._run_started)
        ):
            self.catalog.release_claim(iid, self.worker)
            return Outcome("skipped")

        self._done.add(iid)
        return None

    def mark_pending(self, iid: str) -> None:
        """Step 1 of the protocol, for an image this indexer has begun."""
        self.catalog.mark_pending(iid, self.fingerprint(iid), self.models.collection)

    def fingerprint(self, iid: str) -> str:
        return self._fp.get(iid, self.models.fingerprint)

    def fail(self, iid: str, msg: str) -> Outcome:
        return self.writer.fail(iid, msg, self.fingerprint(iid))

    def _prepare_read(self, path: Path, read: Read) -> Prepared | Outcome:
        """``prepare`` for a begun image; what goes wrong with this image fails it alone."""
        iid, decoded = read.image_id, read.decoded
        if isinstance(decoded, ImageError):
            return self.fail(iid, str(decoded))
        if isinstance(decoded, VideoInfo):
            return self._fail_alone(iid, decoded, lambda: prepare_video(self, path, iid, decoded))
        return self._fail_alone(iid, decoded, lambda: self.prepare(path, iid, decoded))

    def _fail_alone(self, iid: str, decoded: DecodedImage | VideoInfo, step):
        """``step()``, or the image's failure (recorded) when it goes wrong for this image alone."""
        try:
            return step()
        except SegsearchError:
            raise  # configuration/storage problems stop the run
        except ImageError as exc:  # the image itself cannot be processed (e.g. too thin for SAM)
            return self.fail(iid, str(exc))
        except MemoryError:  # this image is too much for this machine: it fails alone, the run goes on
            return self.fail(
                iid,
                f"out of memory while processing this {decoded.width}x"
                f"{decoded.height} {'video' if isinstance(decoded, VideoInfo) else 'image'} "
                "(it fails alone; the rest of the run goes on)",
            )
        except Exception as exc:  # noqa: BLE001 - a model error on one image must not stop the run
            return self.fail(iid, f"processing error: {type(exc).__name__}: {exc}")

    def prepare(self, path: Path, iid: str, decoded: DecodedImage) -> Prepared:
        """Steps 1-2 of the protocol: mark pending, masks, segment records and crops."""
        t0 = time.perf_counter()
        mask_generator, embedder = mask_generator_for(self.models), self.models.embedder  # load before any write
        if time.perf_counter() - t0 > 0.01:
            self.times.add("load_models", time.perf_counter() - t0)
        check_sam_view(decoded.width, decoded.height, int(self.models.sam_spec.config["image_size"]))
        if self.models.guard is not None:
            self.models.guard()
        self.mark_pending(iid)
        t0 = time.perf_counter()
        masks = generate_photo(mask_generator, decoded.rgb, self.settings.mask_side)
        t1 = time.perf_counter()
        for stage, seconds in sam_stage_times(mask_generator, t1 - t0).items():
            self.times.add(stage, seconds)
        segments, crops = build_segments(
            iid, self.models.fingerprint, decoded, masks, self.settings, embedder.image_size
        )
        self.times.add("crops", time.perf_counter() - t1)
        return Prepared(path, iid, decoded.width, decoded.height, decoded.format, segments, crops, meta=decoded.meta)

    def add(self, prepared: Prepared, record: Record) -> None:
        """Queue a prepared image in the current write group; the group is written once full."""
        self._group.append(prepared)
        if self.writer.group_full(self._group):
            self.flush(record)

    def flush(self, record: Record) -> None:
        """Write the current group and record each image's outcome."""
        group, self._group = self._group, []
        for prepared, outcome in self.writer.write_group(group):
            record(outcome, prepared.path)
