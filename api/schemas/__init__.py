"""Request and response bodies of the /v1 API (one module, as in FastAPI's full-stack template)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _lone_surrogate(v, where: str = "") -> str | None:
    """Where a JSON body holds a lone surrogate (``"\\udcff"``: valid JSON, not valid Unicode text),
    or None. Such a string cannot be stored or answered, so it is refused at the door (422)."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return where or "body"
    elif isinstance(v, dict):
        for k, x in v.items():
            got = _lone_surrogate(k, where) or _lone_surrogate(x, f"{where}.{k}" if where else str(k))
            if got:
                return got
    elif isinstance(v, list):
        for i, x in enumerate(v):
            got = _lone_surrogate(x, f"{where}[{i}]")
            if got:
                return got
    return None


class RequestBody(BaseModel):
    """Base of every JSON request body: unknown fields refused, text must be valid Unicode."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data):
        where = _lone_surrogate(data)
        if where:
            raise ValueError(f"{where}: text with a lone surrogate (\\ud800-\\udfff) is not valid Unicode")
        return data


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class Near(RequestBody):
    model_config = ConfigDict(extra="forbid")

    lat: float = Field(..., ge=-90, le=90)
    lon: float = Field(..., ge=-180, le=180)
    km: float = Field(..., gt=0, le=20_000)


class Location(BaseModel):
    lat: float
    lon: float


class Filters(RequestBody):
    model_config = ConfigDict(extra="forbid")

    path_prefix: str | None = Field(None, max_length=4096, description="Only images under this folder.")
    kind: Literal["object", "image", "track", "frame"] | None = Field(
        None,
        description="object/image: a photo's masks or whole photo; track/frame: a video's object tracks or keyframes.",
    )
    media: Literal["photo", "video"] | None = Field(None, description="Only photos' or only videos' segments.")
    min_area: float | None = Field(None, ge=0, le=1, description="Minimum segment area, fraction of the image.")
    max_area: float | None = Field(None, ge=0, le=1)
    image_ids: list[str] | None = Field(None, max_length=1000)
    tags: list[str] | None = Field(None, max_length=16, description="Segments tagged by every one of these concepts.")
    taken_after: dt.datetime | None = Field(None, description="EXIF capture time (no time zone: UTC).")
    taken_before: dt.datetime | None = None
    camera: str | None = Field(None, max_length=128, description="Camera make, model or both, any case.")
    near: Near | None = Field(None, description="Photos whose GPS position is within km of a point.")

    def to_filter(self):
        from segsearch.store.vectors import SearchFilter

        def epoch(t):
            return None if t is None else (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()

        return SearchFilter(
            image_ids=self.image_ids,
            kind=self.kind,
            media=self.media,
            path_prefix=self.path_prefix,
            min_area=self.min_area,
            max_area=self.max_area,
            tags=self.tags,
            taken_after=epoch(self.taken_after),
            taken_before=epoch(self.taken_before),
            camera=self.camera,
            near=(self.near.lat, self.near.lon, self.near.km) if self.near else None,
        )


_ONE_QUERY = {
    "oneOf": [
        {"required": [k], "properties": {k: {"type": "string", "minLength": 1}}}
        for k in ("text", "image_b64", "segment_id")
    ]
}


class SearchRequest(RequestBody):
    """Exactly one of ``text``, ``image_b64``, ``segment_id`` (stated in the schema, so clients and
    schema-driven tools know it)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_QUERY)

    text: str | None = Field(None, min_length=1, max_length=1000)
    image_b64: str | None = Field(None, min_length=1, description="Query image, base64 (JPEG/PNG/...).")
    segment_id: str | None = Field(None, min_length=1, description="More like this segment.")
    negative_text: str | None = Field(
        None, min_length=1, max_length=1000, description="Push results away from this concept."
    )
    top_k: int = Field(10, ge=1, le=200)
    offset: int = Field(0, ge=0, le=10_000)
    filters: Filters = Field(default_factory=Filters)
    group_by_image: bool = False
    group_size: int = Field(3, ge=1, le=50, description="Segments per image when grouping.")
    score_threshold: float | None = Field(None, ge=-1, le=1)

    @model_validator(mode="after")
    def _one_query(self):
        given = [x for x in (self.text, self.image_b64, self.segment_id) if x]
        if len(given) != 1:
            raise ValueError("give exactly one of text, image_b64, segment_id")
        return self


class Links(BaseModel):
    crop: str
    mask: str | None
    overlay: str | None
    image: str
    clip: str | None = Field(None, description="A track's span as MP4 with its mask drawn.")

    @classmethod
    def of(cls, segment_id: str, image_id: str, kind: str) -> Links:
        base = f"/v1/segments/{segment_id}"
        has_mask = kind in ("object", "track")
        return cls(
            crop=f"{base}/crop.jpg",
            mask=f"{base}/mask.png" if has_mask else None,
            overlay=f"{base}/overlay.jpg" if has_mask else None,
            image=f"/v1/videos/{image_id}" if kind in ("track", "frame") else f"/v1/images/{image_id}",
            clip=f"{base}/clip.mp4" if kind == "track" else None,
        )


class Hit(BaseModel):
    segment_id: str
    image_id: str
    image_path: str | None
    kind: str
    bbox: list[int]
    area: int
    area_frac: float
    score: float
    predicted_iou: float | None = None
    stability_score: float | None = None
    tags: list[str] = Field(default_factory=list, description="Concepts that tagged this segment.")
    start_s: float | None = Field(None, description="A video track's first sampled time (s); a keyframe's time.")
    end_s: float | None = Field(None, description="A video track's last sampled time (s).")
    best_s: float | None = Field(None, description="The frame bbox, crop and overlay come from (s).")
    urls: Links

    @classmethod
    def of(cls, h) -> Hit:
        """From a ``segsearch.search.Hit``."""
        return cls(
            segment_id=h.segment_id,
            image_id=h.image_id,
            image_path=h.image_path,
            kind=h.kind,
            bbox=h.bbox,
            area=h.area,
            area_frac=h.area_frac,
            score=h.score,
            predicted_iou=h.predicted_iou,
            stability_score=h.stability_score,
            tags=h.tags,
            start_s=h.start_s,
            end_s=h.end_s,
            best_s=h.best_s,
            urls=Links.of(h.segment_id, h.image_id, h.kind),
        )


class Group(BaseModel):
    image_id: str
    image_path: str | None
    score: float
    hits: list[Hit]


class SearchResponse(BaseModel):
    hits: list[Hit]
    groups: list[Group] | None = None
    next_offset: int | None = None
    weak_below: float | None = Field(
        None,
        description="Scores under this are weak matches for this query: less than one standard deviation above "
        "the library's typical segment (the calibration of scene queries). None while the library is empty.",
    )

    @classmethod
    def of(cls, page, weak_below: float | None = None) -> SearchResponse:
        """From a ``segsearch.search.SearchPage``."""
        groups = (
            None
            if page.groups is None
            else [
                Group(image_id=g.image_id, image_path=g.image_path, score=g.score, hits=[Hit.of(h) for h in g.hits])
                for g in page.groups
            ]
        )
        hits = [h for g in groups for h in g.hits] if groups is not None else [Hit.of(h) for h in page.hits]
        return cls(hits=hits, groups=groups, next_offset=page.next_offset, weak_below=weak_below)


class Segment(BaseModel):
    segment_id: str
    image_id: str
    kind: str
    mask_index: int
    bbox: list[int]
    area: int
    area_frac: float
    predicted_iou: float | None
    stability_score: float | None
    rle: dict | None
    start_s: float | None = None
    end_s: float | None = None
    best_s: float | None = None
    urls: Links

    @classmethod
    def of(cls, row) -> Segment:
        """From a stored ``SegmentRow``."""
        return cls(
            segment_id=row.id,
            image_id=row.image_id,
            kind=row.kind,
            mask_index=row.mask_index,
            bbox=row.bbox,
            area=int(row.area),
            area_frac=row.area_frac,
            predicted_iou=row.predicted_iou,
            stability_score=row.stability_score,
            rle=row.rle,
            start_s=row.start_s,
            end_s=row.end_s,
            best_s=row.best_s,
            urls=Links.of(row.id, row.image_id, row.kind),
        )


class Image(BaseModel):
    image_id: str
    paths: list[str]
    width: int | None
    height: int | None
    format: str | None
    status: str
    error: str | None
    n_segments: int
    taken_at: dt.datetime | None = Field(None, description="EXIF capture time.")
    camera: str | None = Field(None, description="EXIF camera make and model.")
    location: Location | None = Field(None, description="EXIF GPS position.")
    media: str = Field("photo", description="photo or video (a video's tracks: /v1/videos/{id}).")
    duration_s: float | None = Field(None, description="A video's length.")
    segments: list[Segment]


class TrackFrame(BaseModel):
    t: float
    bbox: list[int]


class Track(BaseModel):
    segment_id: str
    start_s: float
    end_s: float
    best_s: float
    bbox: list[int] = Field(description="At the best frame.")
    area_frac: float
    frames: list[TrackFrame] = Field(description="The track's box on every sampled frame.")
    urls: Links


class Keyframe(BaseModel):
    segment_id: str
    t: float
    urls: Links


class Video(BaseModel):
    video_id: str
    paths: list[str]
    width: int | None = Field(description="Of a sampled frame (boxes and masks are in its pixels).")
    height: int | None
    duration_s: float | None
    format: str | None
    status: str
    error: str | None
    tracks: list[Track]
    keyframes: list[Keyframe]


class Stats(BaseModel):
    images: int
    indexed: int
    pending: int
    failed: int
    segments: int
    vectors: int
    collection: str
    clip: str
    sam: str | None = None
    videos: int | None = Field(None, description="Indexed videos (the rest of `indexed` are photos).")
    last_run: dict | None = Field(None, description="The last index run: status, finished_at, indexed, failed.")


class Examples(BaseModel):
    queries: list[str] = Field(
        description="Words the library's segments match best, most segments first (segsearch/examples.py)."
    )


class MaskOut(BaseModel):
    rle: dict
    bbox: list[int]
    area: int
    score: float
    mask_token: str = Field(
        description="This mask's low-resolution logits, opaque: send it back as `mask_input` with more "
        "points to refine the mask (SAM's iterative prompting). Valid for the same image and model."
    )


class SegmentResponse(BaseModel):
    image_id: str
    width: int
    height: int
    masks: list[MaskOut]
    overlay_png_b64: str | None = None
    cached_embedding: bool


class IndexJobRequest(RequestBody):
    """Files, folders or globs under the server's library roots."""

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(
        ...,
        min_length=1,
        max_length=1000,
        description="Relative to a library root (serve --root), or absolute under one (SEGSEARCH_MAX_JOB_PATHS caps "
        "how many are taken).",
    )
    force: bool = Field(False, description="Re-index images even if already indexed.")


class JobProgress(BaseModel):
    files_total: int | None = None
    files_done: int = 0
    indexed: int = 0
    skipped: int = 0
    failed: int = 0
    segments: int = 0
    stages: dict[str, float] = Field(default_factory=dict, description="Seconds per pipeline stage.")


class Job(BaseModel):
    job_id: str
    kind: Literal["index", "repair"]
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    request: dict
    progress: JobProgress
    summary: dict | None = Field(None, description="The run summary, as `segsearch index --json` prints it.")
    error: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None


class Info(BaseModel):
    data: str
    library: dict = Field(description="The models and settings this library was indexed with.")
    counts: dict[str, int]
    vectors: int
    collection: str | None
    last_run: dict | None
    size_bytes: dict[str, int]
    ready: bool
    problem: str | None = None


# --- form fields of /v1/search/image and /v1/segment (multipart, so parsed here, not by pydantic) -------
MAX_PROMPT_CHARS = 8192  # 64 points of two numbers each fit many times over; bounds the parse
MAX_POINTS = 64


def _invalid(detail: str):
    from segsearch.api.errors import ProblemError

    return ProblemError(422, "Invalid request", detail)


def parse_box(text: str | None, width: int | None = None, height: int | None = None) -> list[int] | None:
    """'x,y,w,h' -> [x, y, w, h] with positive size, inside a ``width`` x ``height`` image."""
    if text is None or text == "":
        return None
    try:
        box = [int(round(float(v))) for v in text.replace(" ", "").split(",")] if len(text) <= 200 else []
    except (ValueError, OverflowError):  # not numbers, nan, inf, or past float range
        box = []
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0 or min(box[:2]) < 0:
        raise _invalid("box must be 'x,y,w,h' with positive width and height")
    if width is not None and (box[0] >= width or box[1] >= height):
        raise _invalid(f"box lies outside the {width}x{height} image")
    return box


def _json_list(text: str | None, name: str):
    import json

    if text is None or text == "":
        return None
    if len(text) > MAX_PROMPT_CHARS or text.count("[") > 2 * MAX_POINTS + 2:  # also bounds nesting depth
        raise _invalid(f"{name} is too long or too deeply nested")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _invalid(f"{name} must be JSON") from None


def parse_points(points: str | None, labels: str | None, width: int, height: int):
    """JSON points ``[[x, y], ...]`` and labels ``[1, 0, ...]`` -> (coords (N, 2) float32, labels
    (N,) int64), or (None, None) when no points were given."""
    import numpy as np

    pts, lbs = _json_list(points, "points"), _json_list(labels, "labels")
    if pts is None:
        return None, None
    try:
        coords = np.asarray(pts, np.float32).reshape(-1, 2)
        lab = np.asarray(lbs if lbs is not None else [1] * len(coords), np.int64).reshape(-1)
    except (ValueError, TypeError, OverflowError):
        raise _invalid("points must be [[x, y], ...], labels [0|1, ...]") from None
    if len(coords) == 0 or len(coords) > MAX_POINTS or len(lab) != len(coords) or not set(lab.tolist()) <= {0, 1}:
        raise _invalid(f"1-{MAX_POINTS} points, one label (0 or 1) per point")
    if (
        not np.isfinite(coords).all()
        or (coords < 0).any()
        or (coords[:, 0] >= width).any()
        or (coords[:, 1] >= height).any()
    ):
        raise _invalid(f"points must lie inside the {width}x{height} image")
    return coords, lab


# scene queries and concepts live in their own module, re-exported here
from segsearch.api.schemas.scenes import (  # noqa: E402, F401 - re-exported
    Concept,
    ConceptRequest,
    ConceptSearchRequest,
    SceneHit,
    SceneObject,
    SceneObjectHit,
    SceneRelation,
    SceneRequest,
    SceneResponse,
)
