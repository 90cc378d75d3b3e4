"""Wire the stages together: discover -> read+hash -> decode -> masks -> crops -> CLIP -> store.

Streaming: files are read, hashed and decoded ahead of the model in worker threads (a bounded
window, so memory stays flat however large the library); SAM runs on the calling thread; crops
of several images are embedded together in CLIP batches and their vectors written in one store
call (a "write group", bounded by ``write_group_images`` / ``write_group_crops``).

Consistency protocol for one image (``Indexer.prepare`` then ``Indexer.write_group``):

1. SQL: image marked ``pending`` for the current pipeline fingerprint.
2. Masks, crops and vectors are computed in memory.
3. Vectors: stale points of the image are deleted, the new ones upserted (durable on return).
4. SQL, one transaction: old segment rows replaced by the new ones, image marked ``indexed``.

A crash anywhere before 4 leaves the image ``pending`` (with a write group, every image of the
group not yet committed); the next run redoes it. Segment ids
are deterministic, and step 3 first removes whatever an interrupted attempt left, so a redo
never duplicates and never leaves orphan vectors.

Several indexers at once (same database and vector server): before step 1 an indexer *claims*
the image in SQL (``Catalog.claim``, a lease renewed by a heartbeat thread, released after step
4). An image claimed by another live indexer is deferred; once its own pass is over, an indexer
waits on its deferred images until each is indexed by its holder or the holder's lease expires
(it crashed), and then takes it over. So N indexers walking the same folders split the model work,
no image is done twice, and a crashed indexer's images are still done.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segsearch.errors import ImageError, SegsearchError
from segsearch.identity import collection_name, image_id, pipeline_fingerprint, segment_id
from segsearch.images import DecodedImage, check_sam_view, decode_image
from segsearch.masks import MaskSet, encode_rle
from segsearch.settings import Settings
from segsearch.store.sql import Catalog, as_utc, utcnow
from segsearch.store.vectors import VectorIndex, VectorPoint, path_dirs

from segsearch.indexer.crops import cut_crop, whole_image
from segsearch.indexer.discover import discover


def _dead_local_worker(worker: str) -> bool:
    """True for a default worker id (host:pid:tag) of a process on this host that no longer runs."""
    rest = worker.split(":")
    if len(rest) < 3 or not rest[-2].isdigit():
        return False
    host, pid = ":".join(rest[:-2]), int(rest[-2])
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class _Heartbeat:
    """Renews this indexer's claims every lease/3 seconds while a run lasts."""

    def __init__(self, catalog: Catalog, worker: str, lease_s: float):
        self.catalog, self.worker, self.lease_s = catalog, worker, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="segsearch-claims", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.catalog.renew_claims(self.worker, self.lease_s)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease has slack
                pass

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class Stop(BaseException):
    """Ends a run early from inside it (a cancelled server job, raised before an image's model
    work or after an outcome is recorded). A BaseException, like KeyboardInterrupt, so that the
    per-image error handling cannot take it for a failure of the image. Images already written
    stay indexed; the ones in flight stay pending and the next run redoes them."""


@dataclass
class Failure:
    path: str
    error: str


@dataclass
class RunSummary:
    run_id: int | None = None
    indexed: int = 0
    skipped: int = 0
    failed: int = 0
    segments: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (read/decode summed over threads)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["images_per_s"] = round(self.indexed / self.seconds, 3) if self.seconds > 0 else None
        d["stages"] = {k: round(v, 3) for k, v in self.stages.items()}
        return d


@dataclass
class Outcome:
    status: str  # "indexed" | "skipped" | "failed"
    segments: int = 0
    error: str | None = None


@dataclass
class Read:
    """A file read, hashed and decoded by a worker thread."""

    stat: os.stat_result
    known: tuple | None
    image_id: str
    size: int
    decoded: DecodedImage | ImageError


@dataclass
class Prepared:
    """An image through masks and crops, waiting for its write group."""

    path: Path
    image_id: str
    width: int
    height: int
    format: str
    segments: list[dict]
    crops: list
    vectors: object = None  # np.ndarray when an engine embedded the crops already (Ray)


@dataclass
class Deferred:
    """An image another live indexer has claimed: looked at again after this indexer's pass."""

    path: Path
    image_id: str


class Models:
    """The SAM mask generator and CLIP embedder, built on first use: a run with nothing new to
    index never loads a model. Fingerprints come from the specs alone."""

    def __init__(self, settings: Settings, *, sam_spec=None, clip_spec=None, mask_generator=None,
                 embedder=None, engine: str | None = None):
        from segsearch.models import get_clip_spec, get_sam_spec

        self.settings = settings
        self.sam_spec = sam_spec or get_sam_spec(settings.sam)
        self.clip_spec = clip_spec or (embedder.spec if embedder else get_clip_spec(settings.clip, settings.clip_arch))
        self.engine = engine or settings.amg
        self._mask_generator = mask_generator
        self._embedder = embedder

    @property
    def fingerprint(self) -> str:
        return pipeline_fingerprint(self.sam_spec.fingerprint, self.clip_spec.fingerprint,
                                    self.settings.amg_params(), self.settings.crop_params())

    @property
    def collection(self) -> str:
        return collection_name(self.clip_spec.fingerprint)

    @property
    def embedder(self):
        if self._embedder is None:
            from segsearch.models.clip import ClipEmbedder

            s = self.settings
            self._embedder = ClipEmbedder.from_spec(self.clip_spec, s.checkpoints, device=s.resolved_device(),
                                                    offline=s.offline, batch_size=s.clip_batch_size)
        return self._embedder

    @property
    def mask_generator(self):
        if self._mask_generator is None:
            from segsearch.indexer.amg import make_mask_generator
            from segsearch.models.sam import load_sam

            s = self.settings
            sam = load_sam(self.sam_spec, s.checkpoints, device=s.resolved_device(), offline=s.offline)
            self._mask_generator = make_mask_generator(self.engine, sam, **s.amg_params())
        return self._mask_generator


class Indexer:
    def __init__(self, settings: Settings, catalog: Catalog, vectors: VectorIndex, models: Models):
        self.settings = settings
        self.catalog = catalog
        self.vectors = vectors
        self.models = models
        self._done: set[str] = set()  # image ids handled in this run (same bytes at two paths)
        self.stages: dict[str, float] = {}
        self._stage_lock = threading.Lock()
        self.worker = settings.worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._run_started = None  # wall clock of the run start (for --force with several indexers)

    def _time(self, stage: str, seconds: float) -> None:
        with self._stage_lock:
            self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    # --- one run -------------------------------------------------------------------------------
    def run(self, inputs: Iterable[str | Path], *, force: bool = False,
            progress: Callable[[Outcome, Path], None] | None = None) -> RunSummary:
        paths = list(discover(inputs))
        return self.run_paths(paths, force=force, progress=progress)

    def run_paths(self, paths: list[Path], *, force: bool = False,
                  progress: Callable[[Outcome, Path], None] | None = None) -> RunSummary:
        started = time.perf_counter()
        summary = RunSummary()
        summary.run_id = self.catalog.start_run({
            "sam": self.models.sam_spec.name, "clip": self.models.clip_spec.name,
            "fingerprint": self.models.fingerprint, "collection": self.models.collection, "force": force,
            "amg": self.settings.amg_params(), "crop": self.settings.crop_params(), "inputs": len(paths),
        })
        self._done = set()
        self.stages = {}
        self._run_started = utcnow()
        status = "crashed"
        heartbeat = _Heartbeat(self.catalog, self.worker, self.settings.claim_lease_s)

        def record(outcome: Outcome, path: Path) -> None:
            if outcome.status == "indexed":
                summary.indexed += 1
                summary.segments += outcome.segments
            elif outcome.status == "skipped":
                summary.skipped += 1
            else:
                summary.failed += 1
                summary.failures.append(Failure(str(path), outcome.error or "unknown error"))
            if progress:
                progress(outcome, path)

        try:
            heartbeat.start()
            if self.settings.engine == "ray":
                from segsearch.indexer.ray_engine import ray_pass

                deferred = ray_pass(self, paths, force, record)
            else:
                deferred = self._pass(self._prefetch(paths, force), force, record)
            while deferred:  # images other indexers hold: wait for them, take over a dead one's
                deferred = self._revisit(deferred, force, record)
            if summary.indexed:
                t0 = time.perf_counter()
                self.vectors.optimize()  # embedded store: build/refresh the HNSW index once per run
                self._time("optimize", time.perf_counter() - t0)
            status = "completed"
        except (KeyboardInterrupt, Stop):
            status = "interrupted"
            raise
        finally:
            heartbeat.stop()
            try:
                self.catalog.release_worker_claims(self.worker)  # interrupted: others may go on at once
            except Exception:  # noqa: BLE001
                pass
            summary.seconds = time.perf_counter() - started
            summary.stages = dict(self.stages)
            try:
                self.catalog.finish_run(summary.run_id, status=status, indexed=summary.indexed,
                                        skipped=summary.skipped, failed=summary.failed, segments=summary.segments,
                                        failures=[asdict(f) for f in summary.failures])
            except Exception:  # noqa: BLE001 - never hide the original error
                if status == "completed":
                    raise
        return summary

    def _pass(self, reads, force: bool, record) -> list[Deferred]:
        """Admit each read file, prepare it and write it in groups; returns the deferred images."""
        group: list[Prepared] = []
        deferred: list[Deferred] = []
        for path, pre in reads:
            result = self._admit(path, pre, force)
            if isinstance(result, Outcome):
                record(result, path)
            elif isinstance(result, Deferred):
                deferred.append(result)
            else:
                group.append(result)
                if self.group_full(group):
                    group = self.flush_group(group, record)
        self.flush_group(group, record)
        return deferred

    def flush_group(self, group: list[Prepared], record) -> list[Prepared]:
        """Write a group and record each image's outcome; returns the next (empty) group."""
        for prepared, outcome in self.write_group(group):
            record(outcome, prepared.path)
        return []

    def group_full(self, group: list[Prepared]) -> bool:
        return (len(group) >= self.settings.write_group_images
                or sum(len(g.segments) for g in group) >= self.settings.write_group_crops)

    def _revisit(self, deferred: list[Deferred], force: bool, record) -> list[Deferred]:
        """One round over the deferred images: done by their holder -> skipped; holder gone ->
        read again and go through the normal stages; still held -> wait and keep."""
        fp = self.models.fingerprint
        free, held = [], []
        for d in deferred:
            image = self.catalog.get_image(d.image_id)
            if (image is not None and image.fingerprint == fp and image.status in ("indexed", "failed")
                    and (not force or as_utc(image.updated_at) >= self._run_started)):
                record(Outcome("skipped"), d.path)  # its holder finished it (and reports it)
            elif ((holder := self.catalog.claim_holder(d.image_id)) is None or holder.worker == self.worker
                  or _dead_local_worker(holder.worker)):
                free.append(d)
            else:
                held.append(d)
        if free:
            held += self._pass(((d.path, self._read(d.path, self.stat_skip(d.path, force))) for d in free),
                               force, record)
        if held and not free:
            time.sleep(min(1.0, self.settings.claim_lease_s / 10))
        return held

    # --- stages ----------------------------------------------------------------------------------
    def index_file(self, path: Path, *, force: bool = False) -> Outcome:
        """Index one file through the same stages as a run (no prefetch, a group of one)."""
        result = self._admit(path, self._read(path, self.stat_skip(path, force)), force)
        if isinstance(result, Deferred):
            return Outcome("skipped", error="another indexer is working on it")
        if isinstance(result, Outcome):
            return result
        return self.write_group([result])[0][1]

    def stat_skip(self, path: Path, force: bool):
        """Before reading: an Outcome when the file can be skipped or fails, else ``(stat, known)``."""
        try:
            st = os.stat(path)
            if not os.path.isfile(path):
                return Outcome("failed", error="not a regular file")
        except OSError as exc:
            return Outcome("failed", error=f"cannot read file: {exc.strerror or exc}")
        known = self.catalog.lookup_path(str(path))
        if (known and not force and known[0].size_bytes == st.st_size and known[0].mtime_ns == st.st_mtime_ns
                and known[1].status == "indexed" and known[1].fingerprint == self.models.fingerprint):
            return Outcome("skipped")  # unchanged since it was indexed: not even re-read
        return st, known

    def _read(self, path: Path, pre):
        """Worker-thread stage: read, hash and decode (decoding errors are kept, not raised)."""
        if isinstance(pre, Outcome):
            return pre
        st, known = pre
        t0 = time.perf_counter()
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            return Outcome("failed", error=f"cannot read file: {exc.strerror or exc}")
        iid = image_id(data)
        t1 = time.perf_counter()
        try:
            decoded: DecodedImage | ImageError = decode_image(data, max_pixels=self.settings.max_image_pixels)
        except ImageError as exc:
            decoded = exc
        self._time("read_hash", t1 - t0)
        self._time("decode", time.perf_counter() - t1)
        return Read(st, known, iid, len(data), decoded)

    def _prefetch(self, paths: list[Path], force: bool):
        """(path, read result) in input order; up to ``prefetch`` files read/decoded ahead in threads."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        window = max(1, self.settings.prefetch)
        with ThreadPoolExecutor(max_workers=max(1, self.settings.read_workers),
                                thread_name_prefix="segsearch-read") as pool:
            pending: deque = deque()
            for path in paths:
                pre = self.stat_skip(path, force)  # SQL stays on this thread
                pending.append((path, pool.submit(self._read, path, pre)))
                if len(pending) >= window:
                    p, fut = pending.popleft()
                    yield p, fut.result()
            while pending:
                p, fut = pending.popleft()
                yield p, fut.result()

    def _admit(self, path: Path, read, force: bool):
        """Catalog bookkeeping for a read file; an Outcome, a Deferred, or a Prepared image."""
        booked = self.book(path, read, force)
        if booked is not None:
            return booked
        iid = read.image_id
        if isinstance(read.decoded, ImageError):
            self.fail(iid, str(read.decoded))
            return Outcome("failed", error=str(read.decoded))
        try:
            return self.prepare(path, iid, read.decoded)
        except SegsearchError:
            raise  # configuration/storage problems stop the run
        except ImageError as exc:  # the image itself cannot be processed (e.g. too thin for SAM)
            self.fail(iid, str(exc))
            return Outcome("failed", error=str(exc))
        except MemoryError:  # this image is too much for this machine: it fails alone, the run goes on
            msg = (f"out of memory while processing this {read.decoded.width}x{read.decoded.height} image "
                   "(it fails alone; the rest of the run goes on)")
            self.fail(iid, msg)
            return Outcome("failed", error=msg)
        except Exception as exc:  # noqa: BLE001 - a model error on one image must not stop the run
            msg = f"processing error: {type(exc).__name__}: {exc}"
            self.fail(iid, msg)
            return Outcome("failed", error=msg)

    def book(self, path: Path, read, force: bool) -> Outcome | Deferred | None:
        """Catalog bookkeeping for a read file (its bytes hashed; decoding not needed): the path is
        registered, and the image skipped (an Outcome), left to another indexer (a Deferred), or
        claimed by this one (None: the caller computes it)."""
        if isinstance(read, Outcome):
            return read
        fp, collection = self.models.fingerprint, self.models.collection
        iid, known = read.image_id, read.known
        for orphan in self.catalog.register_file(str(path), iid, read.size, read.stat.st_mtime_ns):
            self.remove_image(orphan)  # the file changed: its old bytes have no path left

        image = self.catalog.get_image(iid)
        if image.status == "indexed" and image.fingerprint == fp and (not force or iid in self._done):
            # same bytes as an image already indexed (another path, or a touched file)
            if known is None or known[0].image_id != iid:
                self.vectors.set_image_paths(collection, iid, self.catalog.image_paths(iid))
            return Outcome("skipped")
        if image.status == "failed" and iid in self._done:
            return Outcome("failed", error=image.error)
        if iid in self._done:  # same bytes at two paths in one write group: the first one indexes it
            return Outcome("skipped")

        if not self._claim(iid):
            return Deferred(path, iid)  # another indexer is on it
        image = self.catalog.get_image(iid)  # it may have finished between our look and our claim
        if (image.status == "indexed" and image.fingerprint == fp
                and (not force or as_utc(image.indexed_at) >= self._run_started)):
            self.catalog.release_claim(iid, self.worker)
            return Outcome("skipped")

        self._done.add(iid)
        return None

    def _claim(self, iid: str) -> bool:
        lease = self.settings.claim_lease_s
        if self.catalog.claim(iid, self.worker, lease):
            return True
        # a holder on this machine whose process is gone (killed) need not be waited for
        holder = self.catalog.claim_holder(iid)
        if holder is not None and _dead_local_worker(holder.worker):
            return self.catalog.take_over(iid, holder.worker, self.worker, lease)
        return holder is None and self.catalog.claim(iid, self.worker, lease)

    def fail(self, iid: str, msg: str) -> None:
        self.catalog.mark_failed(iid, msg, self.models.fingerprint)
        self.catalog.release_claim(iid, self.worker)

    def prepare(self, path: Path, iid: str, decoded: DecodedImage) -> Prepared:
        """Steps 1-2 of the protocol: mark pending, masks, segment rows and crops."""
        fp, collection = self.models.fingerprint, self.models.collection
        t0 = time.perf_counter()
        mask_generator, embedder = self.models.mask_generator, self.models.embedder  # load before any write
        if time.perf_counter() - t0 > 0.01:
            self._time("load_models", time.perf_counter() - t0)
        check_sam_view(decoded.width, decoded.height, int(self.models.sam_spec.config["image_size"]))
        self.catalog.mark_pending(iid, fp, collection)
        t0 = time.perf_counter()
        masks = mask_generator.generate(decoded.rgb)
        t1 = time.perf_counter()
        sub = getattr(mask_generator, "timings", None)
        if sub:  # the fast engine reports encoder / decoder / post-processing
            for k, v in sub.items():
                if k in ("encoder", "decoder", "postprocess"):
                    self._time(f"sam_{k}", v)
        else:
            self._time("sam", t1 - t0)
        masks = masks.filter(masks.areas >= max(self.settings.min_segment_area, 1))
        segments, crops = self.build_segments(iid, decoded, masks)
        self._time("crops", time.perf_counter() - t1)
        return Prepared(path, iid, decoded.width, decoded.height, decoded.format, segments, crops)

    def write_group(self, group: list[Prepared]) -> list[tuple[Prepared, Outcome]]:
        """Steps 3-4 for several images: one CLIP pass over all their crops, one vector upsert,
        then each image's SQL transaction."""
        if not group:
            return []
        fp, collection = self.models.fingerprint, self.models.collection
        t0 = time.perf_counter()
        try:
            if all(g.vectors is not None for g in group):  # embedded upstream (Ray engine)
                vecs = np.concatenate([g.vectors for g in group])
            else:
                vecs = self.models.embedder.embed_images([c for g in group for c in g.crops])
                self._time("clip", time.perf_counter() - t0)
        except SegsearchError:
            raise
        except Exception as exc:  # noqa: BLE001 - MemoryError included: the group fails, the run goes on
            msg = f"processing error: {type(exc).__name__}: {exc}"
            for g in group:
                self.fail(g.image_id, msg)
            return [(g, Outcome("failed", error=msg)) for g in group]

        t0 = time.perf_counter()
        points, start = [], 0
        self.vectors.ensure_collection(collection, int(vecs.shape[1]))
        for g in group:
            paths = self.catalog.image_paths(g.image_id)
            dirs = path_dirs(paths)
            for seg, vec in zip(g.segments, vecs[start : start + len(g.segments)]):
                points.append(VectorPoint(seg["id"], vec, {
                    "image_id": g.image_id, "kind": seg["kind"], "area_frac": seg["area_frac"],
                    "bbox": [seg["x"], seg["y"], seg["w"], seg["h"]], "mask_index": seg["mask_index"],
                    "paths": paths, "dirs": dirs,
                }))
            start += len(g.segments)
            for sid, coll in self.catalog.segment_refs(g.image_id):
                if coll != collection:  # pipeline switched embedding model: old space loses this image
                    self.vectors.delete(coll, [sid])
            self.vectors.delete_by_image(collection, g.image_id)  # leftovers of an interrupted attempt
        self.vectors.upsert(collection, points)  # durable on return
        out = []
        for g in group:
            self.catalog.commit_segments(g.image_id, fingerprint=fp, collection=collection, width=g.width,
                                         height=g.height, fmt=g.format, segments=g.segments)
            self.catalog.release_claim(g.image_id, self.worker)
            out.append((g, Outcome("indexed", segments=len(g.segments))))
        self._time("store", time.perf_counter() - t0)
        return out

    def remove_image(self, iid: str) -> None:
        by_coll: dict[str, list[str]] = {}
        for sid, coll in self.catalog.segment_refs(iid):
            by_coll.setdefault(coll, []).append(sid)
        for coll, ids in by_coll.items():
            self.vectors.delete(coll, ids)
        self.vectors.delete_by_image(self.models.collection, iid)
        self.catalog.delete_image(iid)

    def build_segments(self, iid: str, decoded: DecodedImage, masks: MaskSet):
        """Segment rows (without image/collection columns) and their crops, whole image last."""
        return build_segments(iid, self.models.fingerprint, decoded, masks, self.settings,
                              self.models.embedder.image_size)


def build_segments(iid: str, fp: str, decoded: DecodedImage, masks: MaskSet, s: Settings, size: int):
    """The crop stage: segment rows (without image/collection columns) and their crops (PIL,
    ``size`` square), whole image last. A plain function: the Ray engine runs it in its actors."""
    h, w = decoded.height, decoded.width
    total = float(h * w)
    segments, crops = [], []
    for i in range(len(masks)):
        x, y, bw, bh = (int(v) for v in masks.boxes[i])
        crops.append(cut_crop(decoded.rgb, masks.masks[i], (x, y, bw, bh), mode=s.crop_mode,
                              padding=s.crop_padding, size=size))
        segments.append({
            "id": segment_id(iid, fp, i), "kind": "object", "mask_index": i,
            "x": x, "y": y, "w": bw, "h": bh, "area": int(masks.areas[i]),
            "area_frac": float(masks.areas[i]) / total,
            "predicted_iou": float(masks.predicted_iou[i]), "stability_score": float(masks.stability_score[i]),
            "rle": encode_rle(masks.masks[i]),
        })
    crops.append(whole_image(decoded.rgb, size=size))
    segments.append({
        "id": segment_id(iid, fp, -1), "kind": "image", "mask_index": -1, "x": 0, "y": 0, "w": w, "h": h,
        "area": h * w, "area_frac": 1.0, "predicted_iou": None, "stability_score": None, "rle": None,
    })
    return segments, crops
