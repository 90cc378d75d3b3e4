"""Query routes: search, records, rendered crops/masks/overlays, interactive segmentation.

Thin handlers: validation lives in ``schemas``, search logic in ``segsearch.search`` (through
``services``), rendering in ``segsearch.render``. Model calls happen in plain ``def`` handlers,
which FastAPI runs in its thread pool, so the event loop never waits on torch."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import Response

from segsearch import record, render
from segsearch.errors import ImageError, ImageTooLarge, SegsearchError
from segsearch.exif import PhotoMeta
from segsearch.images import DecodedImage, check_sam_view, decode_image
from segsearch.masks import decode_logits_token, encode_logits_token, encode_rle, mask_box_xywh
from segsearch.paths import on_disk
from segsearch.scene import weak_below
from segsearch.search import minus
from segsearch.store.concepts import ConceptStore
from segsearch.store.schema import as_utc
from segsearch.store.vectors import SearchFilter

from segsearch.api import schemas
from segsearch.api.deps import ServicesDep, require_read
from segsearch.api.errors import ProblemError
from segsearch.api.services import Services

router = APIRouter(prefix="/v1", dependencies=[Depends(require_read)])
NOT_FOUND = {404: {"model": schemas.Problem, "description": "Unknown id"}}
BAD_IMAGE = {413: {"model": schemas.Problem}, 415: {"model": schemas.Problem}}


# --- helpers -------------------------------------------------------------------------------------
def decode_upload(data: bytes, services: Services) -> DecodedImage:
    s = services.settings
    if len(data) > s.max_upload_bytes:
        raise ProblemError(413, "Upload too large", f"{len(data):,} bytes; the limit is {s.max_upload_bytes:,}")
    try:
        return decode_image(
            data, max_pixels=min(s.max_image_pixels, s.max_upload_pixels), cap_name="SEGSEARCH_MAX_UPLOAD_PIXELS"
        )
    except ImageTooLarge as exc:
        raise ProblemError(413, "Image too large", str(exc)) from None
    except ImageError as exc:
        raise ProblemError(415, "Unsupported or undecodable image", str(exc)) from None


def b64decode(text: str) -> bytes:
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or ";base64" not in head:
            raise ProblemError(422, "Invalid request", "image_b64 data URL must be data:<type>;base64,<data>")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProblemError(422, "Invalid request", "image_b64 is not valid base64") from None


def get_segment_row(services: Services, segment_id: str):
    row = services.catalog.get_segments([segment_id]).get(segment_id)
    if row is None:
        raise ProblemError(404, "Segment not found", f"no segment with id {segment_id!r}")
    return row


# --- search --------------------------------------------------------------------------------------
@router.post("/search", response_model=schemas.SearchResponse, responses={**NOT_FOUND, **BAD_IMAGE})
def search(body: schemas.SearchRequest, services: ServicesDep):
    """Text, image (base64) or more-like-this search over segments."""
    if body.text:
        vector = services.text_vector(body.text)
    elif body.image_b64:
        with services.work.slot():
            vector = services.image_vector(decode_upload(b64decode(body.image_b64), services).pil())
    else:
        get_segment_row(services, body.segment_id)
        point = services.vectors.retrieve(services.collection, [body.segment_id]).get(body.segment_id)
        if point is None:
            raise ProblemError(
                404, "Segment not found", f"segment {body.segment_id!r} has no vector in the current model's collection"
            )
        vector = np.asarray(point.vector, np.float32)
    if body.negative_text:
        vector = minus(vector, services.text_vector(body.negative_text))
    flt = body.filters.to_filter()
    if flt.tags:
        ConceptStore(services.catalog).require(flt.tags)  # an unknown concept: 404, not "no hits"
    return schemas.SearchResponse.of(
        services.searcher.page(
            vector,
            top_k=body.top_k,
            offset=body.offset,
            flt=flt,
            score_threshold=body.score_threshold,
            group_by_image=body.group_by_image,
            group_size=body.group_size,
        ),
        weak_below(services.vectors, services.collection, vector),
    )


@router.post("/search/image", response_model=schemas.SearchResponse, responses=BAD_IMAGE)
def search_image(
    services: ServicesDep,
    file: UploadFile = File(..., description="Query image"),
    box: str | None = Form(None, description="Optional region 'x,y,w,h' of the query image"),
    top_k: int = Form(10, ge=1, le=200),
    offset: int = Form(0, ge=0, le=10_000),
    kind: str | None = Form(None, pattern="^(object|image|track|frame)$"),
    media: str | None = Form(None, pattern="^(photo|video)$"),
    group_by_image: bool = Form(False),
):
    """Search with an uploaded image, optionally only a box of it."""
    with services.work.slot():
        decoded = decode_upload(file.file.read(services.settings.max_upload_bytes + 1), services)
        b = schemas.parse_box(box, decoded.width, decoded.height)
        pil = decoded.pil()
        if b:
            pil = pil.crop((b[0], b[1], min(b[0] + b[2], decoded.width), min(b[1] + b[3], decoded.height)))
        vector = services.image_vector(pil)
    return schemas.SearchResponse.of(
        services.searcher.page(
            vector, top_k=top_k, offset=offset, flt=SearchFilter(kind=kind, media=media), group_by_image=group_by_image
        ),
        weak_below(services.vectors, services.collection, vector),
    )


# --- records -------------------------------------------------------------------------------------
@router.get("/segments/{segment_id}", response_model=schemas.Segment, responses=NOT_FOUND)
def get_segment(segment_id: str, services: ServicesDep):
    return schemas.Segment.of(get_segment_row(services, segment_id))


@router.get("/images/{image_id}", response_model=schemas.Image, responses=NOT_FOUND)
def get_image(image_id: str, services: ServicesDep):
    img = services.catalog.get_image(image_id)
    if img is None:
        raise ProblemError(404, "Image not found", f"no image with id {image_id!r}")
    segs = services.catalog.image_segments(image_id)
    return schemas.Image(
        image_id=img.id,
        paths=services.catalog.image_paths(image_id),
        width=img.width,
        height=img.height,
        format=img.format,
        status=img.status,
        error=img.error,
        n_segments=img.n_segments,
        taken_at=as_utc(img.taken_at),
        camera=PhotoMeta(camera_make=img.camera_make, camera_model=img.camera_model).camera,
        location=None if img.gps_lat is None else schemas.Location(lat=img.gps_lat, lon=img.gps_lon),
        media=img.media or "photo",
        duration_s=img.duration_s,
        segments=[schemas.Segment.of(r) for r in segs],
    )


@router.get("/stats", response_model=schemas.Stats)
def stats(services: ServicesDep):
    c = services.catalog.counts()
    return schemas.Stats(
        images=c["images"],
        indexed=c["indexed"],
        pending=c["pending"],
        failed=c["failed"],
        segments=c["segments"],
        vectors=services.vectors.count(services.collection),
        collection=services.collection,
        clip=services.clip_spec.name,
        sam=services.sam_spec.name,
        videos=c["videos"],
        last_run=record.last_run(services.catalog),
    )


@router.get("/examples", response_model=schemas.Examples)
def examples(services: ServicesDep):
    """A few example queries made from this library: the words (of COCO's 80 things, colours and
    shapes) that most of its segments match best. Computed once per library state."""
    with services.work.slot():
        return schemas.Examples(queries=services.examples())


# --- rendered images -----------------------------------------------------------------------------
def _source(services: Services, image_id: str, t: float | None = None) -> np.ndarray:
    """The indexed photo, or a video's frame at ``t``, from the first path that still holds it.
    Decoding a frame stops when the request's time is up."""
    import time

    from segsearch.video import VideoTimeout

    s = services.settings
    deadline = time.monotonic() + s.request_timeout_s
    for path in map(on_disk, services.catalog.image_paths(image_id)):
        try:
            st = os.stat(path)
            if t is not None:
                rgb = render.video_frame(path, t, st.st_mtime_ns, deadline=deadline)
            else:
                rgb = render.source_rgb(path, s.max_image_pixels, st.st_mtime_ns, s.max_image_bytes)
        except VideoTimeout:
            raise ProblemError(
                503, "Request timed out", "decoding the frame took too long", {"Retry-After": "2"}
            ) from None
        except (OSError, ImageError):
            continue
        return rgb
    raise ProblemError(404, "Source image unavailable", "the indexed file was moved, deleted or changed")


def _rendered(services: Services, segment_id: str, what: str, media: str) -> Response:
    # segment ids are derived from image content + pipeline, so one id always has the same mask
    cached = services.renders.get((segment_id, what))
    if cached is None:
        with services.work.slot():
            cached = _render(services, segment_id, what)
        services.renders.put((segment_id, what), cached)
    return Response(cached, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


def _render(services: Services, segment_id: str, what: str) -> bytes:
    row = get_segment_row(services, segment_id)
    if what in ("mask", "overlay") and row.rle is None:
        raise ProblemError(404, "No mask", "whole-image and keyframe segments have no mask")
    if what == "mask":
        return render.mask_png(row.rle)
    rgb = _source(services, row.image_id, row.best_s)
    if row.rle is not None and tuple(row.rle["size"]) != rgb.shape[:2]:
        raise ProblemError(404, "Source image unavailable", "the file at the indexed path has changed")
    return render.crop_jpeg(rgb, row.rle, row.bbox) if what == "crop" else render.overlay_jpeg(rgb, row.rle)


@router.get("/segments/{segment_id}/crop.jpg", response_class=Response, responses=NOT_FOUND)
def segment_crop(segment_id: str, services: ServicesDep):
    return _rendered(services, segment_id, "crop", "image/jpeg")


@router.get("/segments/{segment_id}/mask.png", response_class=Response, responses=NOT_FOUND)
def segment_mask(segment_id: str, services: ServicesDep):
    return _rendered(services, segment_id, "mask", "image/png")


@router.get("/segments/{segment_id}/overlay.jpg", response_class=Response, responses=NOT_FOUND)
def segment_overlay(segment_id: str, services: ServicesDep):
    return _rendered(services, segment_id, "overlay", "image/jpeg")


@router.get("/images/{image_id}/image.jpg", response_class=Response, responses=NOT_FOUND)
def image_jpeg(
    image_id: str, services: ServicesDep, t: float | None = Query(None, ge=0, le=1e6, description="A video's time (s).")
):
    """The photo itself, orientation-corrected, at most 1600 px on its longer side (the page shows
    it with its segments outlined, and prompts SAM on it); ``X-Scale`` is displayed / original. For
    a video, its frame at ``t`` (default 0)."""
    img = services.catalog.get_image(image_id)
    if img is None or img.status != "indexed":
        raise ProblemError(404, "Image not found", f"no indexed image with id {image_id!r}")
    t = (t or 0.0) if img.media == "video" else None
    if t is not None and img.duration_s is not None and t > img.duration_s:  # before any decoding
        raise ProblemError(404, "No such frame", f"t={t:g} s is past the video's end ({img.duration_s:.2f} s)")
    if t is not None:
        t = round(t, 1)  # one decode (and cache entry) per tenth of a second
    cached = services.renders.get((image_id, "image", t))
    if cached is None:
        with (services.video_work if t is not None else services.work).slot():
            cached = render.overlay_jpeg(_source(services, image_id, t), None)
        services.renders.put((image_id, "image", t), cached)
    scale = min(1.0, 1600 / max(img.width or 1, img.height or 1))
    headers = {"Cache-Control": "private, max-age=3600", "X-Scale": f"{scale:.6f}"}
    return Response(cached, media_type="image/jpeg", headers=headers)


# --- interactive segmentation ----------------------------------------------------------------------
@router.post("/segment", response_model=schemas.SegmentResponse, responses={**NOT_FOUND, **BAD_IMAGE})
def segment(
    services: ServicesDep,
    file: UploadFile | None = File(None, description="Image to segment (or give image_id)"),
    image_id: str | None = Form(None, description="An indexed image instead of an upload"),
    points: str | None = Form(None, description="JSON [[x, y], ...] in image pixels"),
    labels: str | None = Form(None, description="JSON [1, 0, ...]: 1 foreground, 0 background"),
    box: str | None = Form(None, description="'x,y,w,h'"),
    multimask_output: bool = Form(True),
    mask_input: str | None = Form(
        None, description="A `mask_token` of an earlier answer on this image: refine that mask with these prompts"
    ),
    overlay: bool = Form(False, description="Also return a PNG overlay of the best mask"),
):
    """Point/box prompts on one image -> masks. The image embedding is cached by content."""
    with services.work.slot():
        if (file is None) == (image_id is None):
            raise ProblemError(422, "Invalid request", "give exactly one of file or image_id")
        if file is not None:
            data = file.file.read(services.settings.max_upload_bytes + 1)
            rgb, key = decode_upload(data, services).rgb, hashlib.sha256(data).hexdigest()
        else:
            if services.catalog.get_image(image_id) is None:
                raise ProblemError(404, "Image not found", f"no image with id {image_id!r}")
            rgb, key = _source(services, image_id), image_id
        h, w = rgb.shape[:2]
        try:
            check_sam_view(w, h, int(services.sam_spec.config["image_size"]))
        except ImageError as exc:
            raise ProblemError(422, "Image cannot be segmented", str(exc)) from None
        coords, lab = schemas.parse_points(points, labels, w, h)
        b = schemas.parse_box(box, w, h)
        if coords is None and b is None:
            raise ProblemError(422, "Invalid request", "give points and/or a box")
        xyxy = [b[0], b[1], b[0] + b[2], b[1] + b[3]] if b else None
        try:
            segmenter = services.segmenter
            prior = None
            if mask_input is not None:
                try:
                    prior = decode_logits_token(mask_input, key, segmenter.low_res_shape)
                except ValueError as exc:
                    raise ProblemError(422, "Invalid mask_input", str(exc)) from None
            got = segmenter.predict(
                key, rgb, points=coords, labels=lab, box_xyxy=xyxy, multimask=multimask_output, mask_input=prior
            )
        except SegsearchError as exc:  # e.g. SAM weights missing on an offline server
            raise ProblemError(503, "Segmentation model unavailable", str(exc)) from None
        masks, scores, cached = got.masks, got.scores, got.cached
        out = [
            schemas.MaskOut(
                rle=encode_rle(masks[i]),
                bbox=list(mask_box_xywh(masks[i])),
                area=int(masks[i].sum()),
                score=float(scores[i]),
                mask_token=encode_logits_token(got.logits[i], key),
            )
            for i in np.argsort(-scores)
        ]
        png = None
        if overlay and out:
            buf = io.BytesIO()
            render.overlay(rgb, out[0].rle).save(buf, format="PNG")
            png = base64.b64encode(buf.getvalue()).decode()
        return schemas.SegmentResponse(
            image_id=key, width=w, height=h, masks=out, overlay_png_b64=png, cached_embedding=cached
        )
