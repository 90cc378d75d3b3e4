"""The crop and write stages: an image's masks become segment records and crops; the crops of a
*write group* (several images) are embedded in CLIP batches and their vectors written in one store
call, then each image's SQL transaction commits it (steps 3-4 of the protocol in ``pipeline``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segsearch.concepts import geometry, tag_rows
from segsearch.crops import cut_crop, square_box, whole_image
from segsearch.errors import SegsearchError
from segsearch.exif import PhotoMeta
from segsearch.identity import segment_id
from segsearch.images import DecodedImage
from segsearch.masks import MaskSet, ScaledMask, encode_rle, upscaled_rle
from segsearch.runtime import Models, Stores
from segsearch.settings import Settings
from segsearch.store.schema import SegmentRecord
from segsearch.store.vectors import VectorPoint, path_dirs
from segsearch.video import VideoInfo

from segsearch.indexer.results import Outcome, StageTimes
from segsearch.indexer.working import VIEW_CROP_FACTOR, PhotoMasks


@dataclass
class Prepared:
    """An image through masks and crops, waiting for its write group."""

    path: Path
    image_id: str
    width: int
    height: int
    format: str
    segments: list[SegmentRecord]
    crops: list
    vectors: np.ndarray | None = None  # when an engine embedded the crops already (Ray, videos)
    meta: PhotoMeta = PhotoMeta()
    fingerprint: str | None = None  # None: the pipeline's (a video's includes its sampling)
    video: VideoInfo | None = None
    rows: list = field(default_factory=list)  # more rows committed with the segments (track frames)

    def columns(self) -> dict:
        """Image columns besides the size: photo metadata, or what the file is."""
        video = self.video is not None
        return {
            **self.meta.columns(),
            "media": "video" if video else "photo",
            "duration_s": self.video.duration_s if video else None,
        }


def build_segments(
    iid: str, fp: str, decoded: DecodedImage, masks: MaskSet | PhotoMasks, s: Settings, size: int
) -> tuple[list[SegmentRecord], list]:
    """The crop stage: masks below ``min_segment_area`` (photo pixels) dropped, then one record and
    one crop (PIL, ``size`` square) per mask, and the whole image last. ``masks``: in the photo's
    pixels, or made on a working view (``indexer/working.py``). A plain function: the Ray engine
    runs it in its actors."""
    h, w = decoded.height, decoded.width
    total = float(h * w)
    view = decoded.rgb
    if isinstance(masks, PhotoMasks):
        photo, view = masks, masks.view
        masks = photo.masks
        scaled = [upscaled_rle(m, h, w) for m in masks.masks]  # (rle, area, box) in photo pixels
        keep = [i for i, (_, area, _) in enumerate(scaled) if area >= max(s.min_segment_area, 1)]
        masks, scaled = masks.filter(np.asarray(keep, np.int64)), [scaled[i] for i in keep]
    else:
        photo = None
        masks = masks.filter(masks.areas >= max(s.min_segment_area, 1))
        scaled = [(None, int(a), tuple(int(v) for v in b)) for a, b in zip(masks.areas, masks.boxes)]
    segments, crops = [], []
    for i, (rle, area, (x, y, bw, bh)) in enumerate(scaled):
        if photo is None:
            crop = cut_crop(
                decoded.rgb, masks.masks[i], (x, y, bw, bh), mode=s.crop_mode, padding=s.crop_padding, size=size
            )
            rle = encode_rle(masks.masks[i])
        else:
            crop = _cut_scaled(decoded.rgb, photo, masks.masks[i], (x, y, bw, bh), s, size)
        crops.append(crop)
        segments.append(
            SegmentRecord(
                id=segment_id(iid, fp, i),
                kind="object",
                mask_index=i,
                x=x,
                y=y,
                w=bw,
                h=bh,
                area=area,
                area_frac=area / total,
                predicted_iou=float(masks.predicted_iou[i]),
                stability_score=float(masks.stability_score[i]),
                rle=rle,
            )
        )
    crops.append(whole_image(view, size=size))
    segments.append(
        SegmentRecord(
            id=segment_id(iid, fp, -1),
            kind="image",
            mask_index=-1,
            x=0,
            y=0,
            w=w,
            h=h,
            area=h * w,
            area_frac=1.0,
            predicted_iou=None,
            stability_score=None,
            rle=None,
        )
    )
    return segments, crops


def _cut_scaled(rgb: np.ndarray, photo: PhotoMasks, mask: np.ndarray, box, s: Settings, size: int):
    """A working view's mask (``box``: in photo pixels) as a crop: from the view when it holds at least
    ``VIEW_CROP_FACTOR`` x ``size`` pixels across the crop, else from the photo (a small window)."""
    side = square_box(box, s.crop_padding, photo.width, photo.height)[2]
    fy, fx = photo.view.shape[0] / photo.height, photo.view.shape[1] / photo.width
    if side * min(fx, fy) >= VIEW_CROP_FACTOR * size:
        vbox = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
        return cut_crop(photo.view, mask, vbox, mode=s.crop_mode, padding=s.crop_padding, size=size)
    scaled = ScaledMask(mask, photo.height, photo.width)
    return cut_crop(rgb, scaled, box, mode=s.crop_mode, padding=s.crop_padding, size=size)


class Writer:
    def __init__(self, settings: Settings, stores: Stores, models: Models, worker: str, times: StageTimes):
        self.settings = settings
        self.catalog, self.vectors = stores.catalog, stores.vectors
        self.models = models
        self.worker = worker
        self.times = times
        from segsearch.store.concepts import ConceptStore

        self.concepts = ConceptStore(stores.catalog)

    def tagger(self):
        """The collection's concepts, read again for every write group: a concept learnt while
        this run goes on tags the images written after it."""
        from segsearch.concepts import Concept, Tagger

        return Tagger([Concept.from_row(r) for r in self.concepts.all(self.models.collection)])

    def group_full(self, group: list[Prepared]) -> bool:
        return (
            len(group) >= self.settings.write_group_images
            or sum(len(g.segments) for g in group) >= self.settings.write_group_crops
        )

    def fail(self, iid: str, msg: str, fingerprint: str | None = None) -> Outcome:
        """Record an image as failed (and let go of its claim)."""
        self.catalog.mark_failed(iid, msg, fingerprint or self.models.fingerprint)
        self.catalog.release_claim(iid, self.worker)
        return Outcome("failed", error=msg)

    def write_group(self, group: list[Prepared]) -> list[tuple[Prepared, Outcome]]:
        """Steps 3-4 for several images: one CLIP pass over all their crops, one vector upsert,
        then each image's SQL transaction."""
        if not group:
            return []
        fp, collection = self.models.fingerprint, self.models.collection
        t0 = time.perf_counter()
        try:
            todo = [c for g in group if g.vectors is None for c in g.crops]
            if todo:
                if self.models.guard is not None:
                    self.models.guard()
                fresh = iter(self.models.embedder.embed_images(todo))
                self.times.add("clip", time.perf_counter() - t0)
            # in group order; some were embedded upstream (Ray engine, videos while tracking)
            vecs = np.concatenate(
                [g.vectors if g.vectors is not None else np.stack([next(fresh) for _ in g.crops]) for g in group]
            )
        except SegsearchError:
            raise
        except Exception as exc:  # noqa: BLE001 - MemoryError included: the group fails, the run goes on
            msg = f"processing error: {type(exc).__name__}: {exc}"
            return [(g, self.fail(g.image_id, msg, g.fingerprint)) for g in group]

        t0 = time.perf_counter()
        points, start, tags = [], 0, {}
        self.vectors.ensure_collection(collection, int(vecs.shape[1]))
        tagger = self.tagger()
        for g in group:
            paths = self.catalog.image_paths(g.image_id)
            dirs, meta = path_dirs(paths), g.meta.payload()
            gvecs = vecs[start : start + len(g.segments)]
            geo = [geometry(seg.bbox, seg.area_frac, g.width, g.height) for seg in g.segments] if tagger else None
            tags[g.image_id] = tagger.tags(gvecs, np.stack(geo) if geo else None)
            for seg, vec, t in zip(g.segments, gvecs, tags[g.image_id]):
                payload = {**seg.payload(g.image_id, paths, dirs), **meta}
                if t:
                    payload["tags"] = [name for name, _ in t]
                points.append(VectorPoint(seg.id, vec, payload))
            start += len(g.segments)
            for sid, coll in self.catalog.segment_refs(g.image_id):
                if coll != collection:  # pipeline switched embedding model: old space loses this image
                    self.vectors.delete(coll, [sid])
            self.vectors.delete_by_image(collection, g.image_id)  # leftovers of an interrupted attempt
        self.vectors.upsert(collection, points)  # durable on return
        out = []
        for g in group:
            self.catalog.commit_segments(
                g.image_id,
                fingerprint=g.fingerprint or fp,
                collection=collection,
                width=g.width,
                height=g.height,
                fmt=g.format,
                segments=g.segments,
                meta=g.columns(),
                tags=[*tag_rows(g.image_id, [seg.id for seg in g.segments], tags[g.image_id]), *g.rows],
            )
            self.catalog.release_claim(g.image_id, self.worker)
            out.append((g, Outcome("indexed", segments=len(g.segments))))
        self.times.add("store", time.perf_counter() - t0)
        return out

    def remove_image(self, iid: str) -> None:
        """An image whose bytes no path holds any more: its vectors (every collection) and records."""
        by_coll: dict[str, list[str]] = {}
        for sid, coll in self.catalog.segment_refs(iid):
            by_coll.setdefault(coll, []).append(sid)
        for coll, ids in by_coll.items():
            self.vectors.delete(coll, ids)
        self.vectors.delete_by_image(self.models.collection, iid)
        self.catalog.delete_image(iid)
