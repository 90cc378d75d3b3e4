"""Request and response bodies of the /v1 API (one module, as in FastAPI's full-stack template)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path_prefix: str | None = Field(None, max_length=4096, description="Only images under this folder.")
    kind: Literal["object", "image"] | None = None
    min_area: float | None = Field(None, ge=0, le=1, description="Minimum segment area, fraction of the image.")
    max_area: float | None = Field(None, ge=0, le=1)
    image_ids: list[str] | None = Field(None, max_length=1000)


_ONE_QUERY = {"oneOf": [
    {"required": [k], "properties": {k: {"type": "string", "minLength": 1}}} for k in ("text", "image_b64", "segment_id")
]}


class SearchRequest(BaseModel):
    """Exactly one of ``text``, ``image_b64``, ``segment_id`` (stated in the schema, so clients and
    schema-driven tools know it)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_QUERY)

    text: str | None = Field(None, min_length=1, max_length=1000)
    image_b64: str | None = Field(None, min_length=1, description="Query image, base64 (JPEG/PNG/...).")
    segment_id: str | None = Field(None, min_length=1, description="More like this segment.")
    negative_text: str | None = Field(None, min_length=1, max_length=1000,
                                      description="Push results away from this concept.")
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
    urls: Links


class Group(BaseModel):
    image_id: str
    image_path: str | None
    score: float
    hits: list[Hit]


class SearchResponse(BaseModel):
    hits: list[Hit]
    groups: list[Group] | None = None
    next_offset: int | None = None


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
    urls: Links


class Image(BaseModel):
    image_id: str
    paths: list[str]
    width: int | None
    height: int | None
    format: str | None
    status: str
    error: str | None
    n_segments: int
    segments: list[Segment]


class Stats(BaseModel):
    images: int
    indexed: int
    pending: int
    failed: int
    segments: int
    vectors: int
    collection: str
    clip: str


class MaskOut(BaseModel):
    rle: dict
    bbox: list[int]
    area: int
    score: float


class SegmentResponse(BaseModel):
    image_id: str
    width: int
    height: int
    masks: list[MaskOut]
    overlay_png_b64: str | None = None
    cached_embedding: bool


class IndexJobRequest(BaseModel):
    """Paths as the server sees them (absolute: files, folders or globs)."""

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(..., min_length=1, max_length=10_000)
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
