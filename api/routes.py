"""Thin route handlers. Model calls happen in plain ``def`` handlers, which FastAPI runs in its
thread pool, so the event loop never waits on torch."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response

from segsearch.errors import ImageError, ImageTooLarge, SegsearchError
from segsearch.images import DecodedImage, check_sam_view, decode_image
from segsearch.masks import encode_rle, mask_box_xywh
from segsearch.store.vectors import SearchFilter

from segsearch.api import render, schemas
from segsearch.api.errors import ProblemError
from segsearch.api.services import Services, get_services, require_api_key

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
NOT_FOUND = {404: {"model": schemas.Problem, "description": "Unknown id"}}
BAD_IMAGE = {413: {"model": schemas.Problem}, 415: {"model": schemas.Problem}}


# --- helpers -------------------------------------------------------------------------------------
def links(segment_id: str, image_id: str, kind: str) -> schemas.Links:
    base = f"/v1/segments/{segment_id}"
    has_mask = kind == "object"
    return schemas.Links(crop=f"{base}/crop.jpg", mask=f"{base}/mask.png" if has_mask else None,
                         overlay=f"{base}/overlay.jpg" if has_mask else None, image=f"/v1/images/{image_id}")


def decode_upload(data: bytes, services: Services) -> DecodedImage:
    s = services.settings
    if len(data) > s.max_upload_bytes:
        raise ProblemError(413, "Upload too large", f"{len(data):,} bytes; the limit is {s.max_upload_bytes:,}")
    try:
        return decode_image(data, max_pixels=min(s.max_image_pixels, s.max_upload_pixels),
                            cap_name="SEGSEARCH_MAX_UPLOAD_PIXELS")
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


def parse_box(text: str | None, width: int | None = None, height: int | None = None) -> list[int] | None:
    if text is None or text == "":
        return None
    try:
        box = [int(round(float(v))) for v in text.replace(" ", "").split(",")] if len(text) <= 200 else []
    except (ValueError, OverflowError):  # not numbers, nan, inf, or past float range
        box = []
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0 or min(box[:2]) < 0:
        raise ProblemError(422, "Invalid request", "box must be 'x,y,w,h' with positive width and height")
    if width is not None and (box[0] >= width or box[1] >= height):
        raise ProblemError(422, "Invalid request", f"box lies outside the {width}x{height} image")
    return box


def to_filter(f: schemas.Filters) -> SearchFilter:
    return SearchFilter(image_ids=f.image_ids, kind=f.kind, path_prefix=f.path_prefix, min_area=f.min_area,
                        max_area=f.max_area)


def get_segment_row(services: Services, segment_id: str):
    row = services.catalog.get_segments([segment_id]).get(segment_id)
    if row is None:
        raise ProblemError(404, "Segment not found", f"no segment with id {segment_id!r}")
    return row


def run_search(services: Services, vector, req_top_k: int, offset: int, flt: SearchFilter, threshold,
               group_by_image: bool, group_size: int) -> schemas.SearchResponse:
    searcher = services.searcher
    if not group_by_image:
        hits = searcher.search_vector(vector, top_k=req_top_k + 1, flt=flt, offset=offset, score_threshold=threshold)
        more = len(hits) > req_top_k
        out = [hit_model(h) for h in hits[:req_top_k]]
        return schemas.SearchResponse(hits=out, next_offset=offset + req_top_k if more else None)
    # groups: best segments per image, images ranked by their best segment
    need = (offset + req_top_k + 1) * group_size * 4
    hits = searcher.search_vector(vector, top_k=min(need, 5000), flt=flt, score_threshold=threshold)
    groups: dict[str, list] = {}
    for h in hits:
        g = groups.setdefault(h.image_id, [])
        if len(g) < group_size:
            g.append(h)
    ordered = list(groups.values())
    page = ordered[offset : offset + req_top_k]
    out_groups = [schemas.Group(image_id=g[0].image_id, image_path=g[0].image_path, score=g[0].score,
                                hits=[hit_model(h) for h in g]) for g in page]
    more = len(ordered) > offset + req_top_k
    return schemas.SearchResponse(hits=[h for g in out_groups for h in g.hits], groups=out_groups,
                                  next_offset=offset + req_top_k if more else None)


def hit_model(h) -> schemas.Hit:
    return schemas.Hit(segment_id=h.segment_id, image_id=h.image_id, image_path=h.image_path, kind=h.kind,
                       bbox=h.bbox, area=h.area, area_frac=h.area_frac, score=h.score,
                       predicted_iou=h.predicted_iou, stability_score=h.stability_score,
                       urls=links(h.segment_id, h.image_id, h.kind))


def unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


# --- search --------------------------------------------------------------------------------------
@router.post("/search", response_model=schemas.SearchResponse, responses={**NOT_FOUND, **BAD_IMAGE})
def search(body: schemas.SearchRequest, services: Services = Depends(get_services)):
    """Text, image (base64) or more-like-this search over segments."""
    if body.text:
        vector = services.text_vector(body.text)
    elif body.image_b64:
        with services.work.slot():
            decoded = decode_upload(b64decode(body.image_b64), services)
            with services.model_lock:
                vector = services.embedder.embed_images([decoded.pil()])[0]
    else:
        get_segment_row(services, body.segment_id)
        point = services.vectors.retrieve(services.collection, [body.segment_id]).get(body.segment_id)
        if point is None:
            raise ProblemError(404, "Segment not found", f"segment {body.segment_id!r} has no vector in "
                               f"the current model's collection")
        vector = np.asarray(point.vector, np.float32)
    if body.negative_text:
        vector = unit(np.asarray(vector) - 0.5 * services.text_vector(body.negative_text))
    return run_search(services, vector, body.top_k, body.offset, to_filter(body.filters), body.score_threshold,
                      body.group_by_image, body.group_size)


@router.post("/search/image", response_model=schemas.SearchResponse, responses=BAD_IMAGE)
def search_image(
    file: UploadFile = File(..., description="Query image"),
    box: str | None = Form(None, description="Optional region 'x,y,w,h' of the query image"),
    top_k: int = Form(10, ge=1, le=200),
    offset: int = Form(0, ge=0, le=10_000),
    kind: str | None = Form(None, pattern="^(object|image)$"),
    group_by_image: bool = Form(False),
    services: Services = Depends(get_services),
):
    """Search with an uploaded image, optionally only a box of it."""
    with services.work.slot():
        decoded = decode_upload(file.file.read(services.settings.max_upload_bytes + 1), services)
        b = parse_box(box, decoded.width, decoded.height)
        pil = decoded.pil()
        if b:
            pil = pil.crop((b[0], b[1], min(b[0] + b[2], decoded.width), min(b[1] + b[3], decoded.height)))
        with services.model_lock:
            vector = services.embedder.embed_images([pil])[0]
    return run_search(services, vector, top_k, offset, SearchFilter(kind=kind), None, group_by_image, 3)


# --- records -------------------------------------------------------------------------------------
def segment_model(row) -> schemas.Segment:
    return schemas.Segment(segment_id=row.id, image_id=row.image_id, kind=row.kind, mask_index=row.mask_index,
                           bbox=row.bbox, area=int(row.area), area_frac=row.area_frac,
                           predicted_iou=row.predicted_iou, stability_score=row.stability_score, rle=row.rle,
                           urls=links(row.id, row.image_id, row.kind))


@router.get("/segments/{segment_id}", response_model=schemas.Segment, responses=NOT_FOUND)
def get_segment(segment_id: str, services: Services = Depends(get_services)):
    return segment_model(get_segment_row(services, segment_id))


@router.get("/images/{image_id}", response_model=schemas.Image, responses=NOT_FOUND)
def get_image(image_id: str, services: Services = Depends(get_services)):
    img = services.catalog.get_image(image_id)
    if img is None:
        raise ProblemError(404, "Image not found", f"no image with id {image_id!r}")
    segs = services.catalog.image_segments(image_id)
    return schemas.Image(image_id=img.id, paths=services.catalog.image_paths(image_id), width=img.width,
                         height=img.height, format=img.format, status=img.status, error=img.error,
                         n_segments=img.n_segments, segments=[segment_model(r) for r in segs])


@router.get("/stats", response_model=schemas.Stats)
def stats(services: Services = Depends(get_services)):
    c = services.catalog.counts()
    return schemas.Stats(images=c["images"], indexed=c["indexed"], pending=c["pending"], failed=c["failed"],
                         segments=c["segments"], vectors=services.vectors.count(services.collection),
                         collection=services.collection, clip=services.clip_spec.name)


# --- rendered images -----------------------------------------------------------------------------
def _source(services: Services, image_id: str) -> np.ndarray:
    for path in services.catalog.image_paths(image_id):
        try:
            st = os.stat(path)
            rgb = render.source_rgb(path, services.settings.max_image_pixels, st.st_mtime_ns)
        except (OSError, ImageError):
            continue
        return rgb
    raise ProblemError(404, "Source image unavailable", "the indexed file was moved, deleted or changed")


def _rendered(services: Services, segment_id: str, what: str) -> bytes:
    # segment ids are derived from image content + pipeline, so one id always has the same mask
    cached = services.renders.get((segment_id, what))
    if cached is None:
        with services.work.slot():
            cached = _render(services, segment_id, what)
        services.renders.put((segment_id, what), cached)
    return cached


def _render(services: Services, segment_id: str, what: str) -> bytes:
    row = get_segment_row(services, segment_id)
    if what in ("mask", "overlay") and row.rle is None:
        raise ProblemError(404, "No mask", "whole-image segments have no mask")
    if what == "mask":
        return render.mask_png(row.rle)
    rgb = _source(services, row.image_id)
    if row.rle is not None and tuple(row.rle["size"]) != rgb.shape[:2]:
        raise ProblemError(404, "Source image unavailable", "the file at the indexed path has changed")
    return render.crop_jpeg(rgb, row.rle, row.bbox) if what == "crop" else render.overlay_jpeg(rgb, row.rle)


def _render_response(services: Services, segment_id: str, what: str, media: str) -> Response:
    return Response(_rendered(services, segment_id, what), media_type=media,
                    headers={"Cache-Control": "private, max-age=3600"})


@router.get("/segments/{segment_id}/crop.jpg", response_class=Response, responses=NOT_FOUND)
def segment_crop(segment_id: str, services: Services = Depends(get_services)):
    return _render_response(services, segment_id, "crop", "image/jpeg")


@router.get("/segments/{segment_id}/mask.png", response_class=Response, responses=NOT_FOUND)
def segment_mask(segment_id: str, services: Services = Depends(get_services)):
    return _render_response(services, segment_id, "mask", "image/png")


@router.get("/segments/{segment_id}/overlay.jpg", response_class=Response, responses=NOT_FOUND)
def segment_overlay(segment_id: str, services: Services = Depends(get_services)):
    return _render_response(services, segment_id, "overlay", "image/jpeg")


# --- interactive segmentation ----------------------------------------------------------------------
MAX_PROMPT_CHARS = 8192  # 64 points of two numbers each fit many times over; bounds the parse


def _json_list(text: str | None, name: str):
    if text is None or text == "":
        return None
    if len(text) > MAX_PROMPT_CHARS or text.count("[") > 2 * 64 + 2:  # also bounds nesting depth
        raise ProblemError(422, "Invalid request", f"{name} is too long or too deeply nested")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ProblemError(422, "Invalid request", f"{name} must be JSON") from None


@router.post("/segment", response_model=schemas.SegmentResponse, responses={**NOT_FOUND, **BAD_IMAGE})
def segment(
    request: Request,
    file: UploadFile | None = File(None, description="Image to segment (or give image_id)"),
    image_id: str | None = Form(None, description="An indexed image instead of an upload"),
    points: str | None = Form(None, description="JSON [[x, y], ...] in image pixels"),
    labels: str | None = Form(None, description="JSON [1, 0, ...]: 1 foreground, 0 background"),
    box: str | None = Form(None, description="'x,y,w,h'"),
    multimask_output: bool = Form(True),
    overlay: bool = Form(False, description="Also return a PNG overlay of the best mask"),
    services: Services = Depends(get_services),
):
    """Point/box prompts on one image -> masks. The image embedding is cached by content."""
    with services.work.slot():
        return _segment(file, image_id, points, labels, box, multimask_output, overlay, services)


def _segment(file, image_id, points, labels, box, multimask_output, overlay, services: Services):
    if (file is None) == (image_id is None):
        raise ProblemError(422, "Invalid request", "give exactly one of file or image_id")
    if file is not None:
        data = file.file.read(services.settings.max_upload_bytes + 1)
        decoded = decode_upload(data, services)
        key = hashlib.sha256(data).hexdigest()
        rgb = decoded.rgb
    else:
        if services.catalog.get_image(image_id) is None:
            raise ProblemError(404, "Image not found", f"no image with id {image_id!r}")
        rgb, key = _source(services, image_id), image_id
    h, w = rgb.shape[:2]
    try:
        check_sam_view(w, h, int(services.sam_spec.config["image_size"]))
    except ImageError as exc:
        raise ProblemError(422, "Image cannot be segmented", str(exc)) from None
    pts = _json_list(points, "points")
    lbs = _json_list(labels, "labels")
    b = parse_box(box, w, h)
    if pts is None and b is None:
        raise ProblemError(422, "Invalid request", "give points and/or a box")
    coords = lab = None
    if pts is not None:
        try:
            coords = np.asarray(pts, np.float32).reshape(-1, 2)
            lab = np.asarray(lbs if lbs is not None else [1] * len(coords), np.int64).reshape(-1)
        except (ValueError, TypeError, OverflowError):
            raise ProblemError(422, "Invalid request", "points must be [[x, y], ...], labels [0|1, ...]") from None
        if len(coords) == 0 or len(coords) > 64 or len(lab) != len(coords) or not set(lab.tolist()) <= {0, 1}:
            raise ProblemError(422, "Invalid request", "1-64 points, one label (0 or 1) per point")
        if not np.isfinite(coords).all() or (coords < 0).any() or (coords[:, 0] >= w).any() or (coords[:, 1] >= h).any():
            raise ProblemError(422, "Invalid request", f"points must lie inside the {w}x{h} image")
    try:
        masks, scores, cached = _predict(services, key, rgb, coords, lab, b, multimask_output)
    except SegsearchError as exc:  # e.g. SAM weights missing on an offline server
        raise ProblemError(503, "Segmentation model unavailable", str(exc)) from None
    order = np.argsort(-scores)
    out = [schemas.MaskOut(rle=encode_rle(masks[i]), bbox=list(mask_box_xywh(masks[i])), area=int(masks[i].sum()),
                           score=float(scores[i])) for i in order]
    png = None
    if overlay and len(order):
        buf = io.BytesIO()
        render.overlay(rgb, out[0].rle).save(buf, format="PNG")
        png = base64.b64encode(buf.getvalue()).decode()
    return schemas.SegmentResponse(image_id=key, width=w, height=h, masks=out, overlay_png_b64=png,
                                   cached_embedding=cached)


def _predict(services: Services, key: str, rgb, coords, labels, box, multimask):
    import torch
    from segment_anything import SamPredictor

    with services.model_lock:
        predictor = SamPredictor(services.sam)
        state = services.embeddings.get(key)
        cached = state is not None
        if cached:
            predictor.reset_image()
            predictor.features = state["features"]
            predictor.original_size, predictor.input_size = state["original_size"], state["input_size"]
            predictor.is_image_set = True
        else:
            with torch.inference_mode():
                predictor.set_image(rgb)
            services.embeddings.put(key, {"features": predictor.features, "original_size": predictor.original_size,
                                          "input_size": predictor.input_size})
        xyxy = np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]], np.float32) if box else None
        with torch.inference_mode():
            masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=xyxy,
                                                 multimask_output=multimask)
    return masks.astype(bool), scores, cached
