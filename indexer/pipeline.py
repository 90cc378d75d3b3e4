"""Wire the stages together: discover -> read+hash -> decode -> masks -> crops -> CLIP -> store.

Consistency protocol for one image (see ``Indexer.process_image``):

1. SQL: image marked ``pending`` for the current pipeline fingerprint.
2. Masks, crops and vectors are computed in memory.
3. Vectors: stale points of the image are deleted, the new ones upserted (durable on return).
4. SQL, one transaction: old segment rows replaced by the new ones, image marked ``indexed``.

A crash anywhere before 4 leaves the image ``pending``; the next run redoes it. Segment ids
are deterministic, and step 3 first removes whatever an interrupted attempt left, so a redo
never duplicates and never leaves orphan vectors.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from segsearch.errors import ImageError, SegsearchError
from segsearch.identity import collection_name, image_id, pipeline_fingerprint, segment_id
from segsearch.images import DecodedImage, decode_image
from segsearch.masks import MaskSet, encode_rle
from segsearch.settings import Settings
from segsearch.store.sql import Catalog
from segsearch.store.vectors import VectorIndex, VectorPoint, path_dirs

from segsearch.indexer.crops import cut_crop, whole_image
from segsearch.indexer.discover import discover


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["images_per_s"] = round(self.indexed / self.seconds, 3) if self.seconds > 0 else None
        return d


@dataclass
class Outcome:
    status: str  # "indexed" | "skipped" | "failed"
    segments: int = 0
    error: str | None = None


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
        status = "crashed"
        try:
            for path in paths:
                outcome = self.index_file(path, force=force)
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
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            summary.seconds = time.perf_counter() - started
            try:
                self.catalog.finish_run(summary.run_id, status=status, indexed=summary.indexed,
                                        skipped=summary.skipped, failed=summary.failed, segments=summary.segments,
                                        failures=[asdict(f) for f in summary.failures])
            except Exception:  # noqa: BLE001 - never hide the original error
                if status == "completed":
                    raise
        return summary

    # --- one file ------------------------------------------------------------------------------
    def index_file(self, path: Path, *, force: bool = False) -> Outcome:
        fp, collection = self.models.fingerprint, self.models.collection
        try:
            st = os.stat(path)
            if not os.path.isfile(path):
                return Outcome("failed", error="not a regular file")
        except OSError as exc:
            return Outcome("failed", error=f"cannot read file: {exc.strerror or exc}")

        key = str(path)
        known = self.catalog.lookup_path(key)
        if (known and not force and known[0].size_bytes == st.st_size and known[0].mtime_ns == st.st_mtime_ns
                and known[1].status == "indexed" and known[1].fingerprint == fp):
            return Outcome("skipped")  # unchanged since it was indexed: not even re-read

        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            return Outcome("failed", error=f"cannot read file: {exc.strerror or exc}")
        iid = image_id(data)
        for orphan in self.catalog.register_file(key, iid, len(data), st.st_mtime_ns):
            self._remove_image(orphan)  # the file changed: its old bytes have no path left

        image = self.catalog.get_image(iid)
        if image.status == "indexed" and image.fingerprint == fp and (not force or iid in self._done):
            # same bytes as an image already indexed (another path, or a touched file)
            if known is None or known[0].image_id != iid:
                self.vectors.set_image_paths(collection, iid, self.catalog.image_paths(iid))
            return Outcome("skipped")
        if image.status == "failed" and iid in self._done:
            return Outcome("failed", error=image.error)

        self._done.add(iid)
        try:
            n = self.process_image(iid, data)
        except ImageError as exc:
            self.catalog.mark_failed(iid, str(exc), fp)
            return Outcome("failed", error=str(exc))
        except (SegsearchError, MemoryError):
            raise  # configuration/storage problems stop the run
        except Exception as exc:  # noqa: BLE001 - a model error on one image must not stop the run
            msg = f"processing error: {type(exc).__name__}: {exc}"
            self.catalog.mark_failed(iid, msg, fp)
            return Outcome("failed", error=msg)
        return Outcome("indexed", segments=n)

    def _remove_image(self, iid: str) -> None:
        by_coll: dict[str, list[str]] = {}
        for sid, coll in self.catalog.segment_refs(iid):
            by_coll.setdefault(coll, []).append(sid)
        for coll, ids in by_coll.items():
            self.vectors.delete(coll, ids)
        self.vectors.delete_by_image(self.models.collection, iid)
        self.catalog.delete_image(iid)

    # --- the consistency protocol ----------------------------------------------------------------
    def process_image(self, iid: str, data: bytes) -> int:
        """Index one image's bytes; returns the number of segments stored (objects + 1 whole image)."""
        fp, collection = self.models.fingerprint, self.models.collection
        decoded = decode_image(data, max_pixels=self.settings.max_image_pixels)
        mask_generator, embedder = self.models.mask_generator, self.models.embedder  # load before any write
        self.catalog.mark_pending(iid, fp, collection)

        masks = mask_generator.generate(decoded.rgb)
        masks = masks.filter(masks.areas >= max(self.settings.min_segment_area, 1))
        segments, crops = self.build_segments(iid, decoded, masks)
        vecs = embedder.embed_images(crops)

        paths = self.catalog.image_paths(iid)
        dirs = path_dirs(paths)
        points = [VectorPoint(seg["id"], vec, {
            "image_id": iid, "kind": seg["kind"], "area_frac": seg["area_frac"],
            "bbox": [seg["x"], seg["y"], seg["w"], seg["h"]], "mask_index": seg["mask_index"],
            "paths": paths, "dirs": dirs,
        }) for seg, vec in zip(segments, vecs)]

        self.vectors.ensure_collection(collection, int(vecs.shape[1]))
        for sid, coll in self.catalog.segment_refs(iid):
            if coll != collection:  # pipeline switched embedding model: old space loses this image
                self.vectors.delete(coll, [sid])
        self.vectors.delete_by_image(collection, iid)  # leftovers of an interrupted attempt
        self.vectors.upsert(collection, points)  # durable on return
        self.catalog.commit_segments(iid, fingerprint=fp, collection=collection, width=decoded.width,
                                     height=decoded.height, fmt=decoded.format, segments=segments)
        return len(segments)

    def build_segments(self, iid: str, decoded: DecodedImage, masks: MaskSet):
        """Segment rows (without image/collection columns) and their crops, whole image last."""
        s, fp = self.settings, self.models.fingerprint
        size = self.models.embedder.image_size
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

