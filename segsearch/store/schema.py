"""The SQL tables (SQLAlchemy 2 declarative models; the schema itself is made by Alembic, in
``migrations/``) and ``SegmentRecord``, the plain record of one segment that the indexer hands the
catalog and the vector index."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(t: dt.datetime | None) -> dt.datetime | None:
    """A stored timestamp as an aware UTC datetime (SQLite hands them back naive)."""
    return t if t is None or t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the bytes
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    fingerprint: Mapped[str | None] = mapped_column(String(128))
    collection: Mapped[str | None] = mapped_column(String(128))
    n_segments: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    indexed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # photo metadata from EXIF (segsearch.exif); None when the file has none
    taken_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    camera_make: Mapped[str | None] = mapped_column(String(128))
    camera_model: Mapped[str | None] = mapped_column(String(128))
    gps_lat: Mapped[float | None] = mapped_column(Float)
    gps_lon: Mapped[float | None] = mapped_column(Float)
    # "photo" (also NULL: rows from before videos) or "video"; a video's length in seconds
    media: Mapped[str | None] = mapped_column(String(16))
    duration_s: Mapped[float | None] = mapped_column(Float)


class FilePath(TypeDecorator):
    """A file's path: names that are not valid UTF-8 are stored escaped (``segsearch.paths``), in
    the same VARCHAR column, so no schema change."""

    impl = String(4096)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        from segsearch.paths import stored

        return None if value is None else stored(str(value))


class ImagePathRow(Base):
    __tablename__ = "image_paths"

    path: Mapped[str] = mapped_column(FilePath, primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class SegmentRow(Base):
    __tablename__ = "segments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # UUID = vector point id
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(128))
    collection: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "object" | "image" | "track" | "frame" (video)
    mask_index: Mapped[int] = mapped_column(Integer)  # -1 for the whole-image segment
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    area: Mapped[int] = mapped_column(BigInteger)
    area_frac: Mapped[float] = mapped_column(Float)
    predicted_iou: Mapped[float | None] = mapped_column(Float)
    stability_score: Mapped[float | None] = mapped_column(Float)
    rle: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # video segments: a track's span and best frame (its box and mask above are that frame's); a
    # keyframe's time in all three
    start_s: Mapped[float | None] = mapped_column(Float)
    end_s: Mapped[float | None] = mapped_column(Float)
    best_s: Mapped[float | None] = mapped_column(Float)

    @property
    def bbox(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


class TrackFrameRow(Base):
    """One sampled frame of a track: its box and mask at time ``t``."""

    __tablename__ = "track_frames"

    segment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    t: Mapped[float] = mapped_column(Float, primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    rle: Mapped[dict] = mapped_column(JSON)

    @property
    def bbox(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


class ConceptRow(Base):
    """A concept learnt from labelled segments (``segsearch.concepts``): its labels and its model."""

    __tablename__ = "concepts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str | None] = mapped_column(Text)
    collection: Mapped[str] = mapped_column(String(128))  # the embedding space the model lives in
    positives: Mapped[list] = mapped_column(JSON)
    negatives: Mapped[list] = mapped_column(JSON)
    model: Mapped[dict] = mapped_column(JSON)  # {"w": [...], "b": float, "threshold": float, ...}
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class SegmentTagRow(Base):
    __tablename__ = "segment_tags"

    segment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    concept: Mapped[str] = mapped_column(ForeignKey("concepts.name", ondelete="CASCADE"), primary_key=True, index=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    score: Mapped[float] = mapped_column(Float)


class ClaimRow(Base):
    __tablename__ = "claims"

    image_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker: Mapped[str] = mapped_column(String(128), index=True)
    claimed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")
    settings: Mapped[dict] = mapped_column(JSON)
    indexed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    segments: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[list | None] = mapped_column(JSON)


class LibraryRow(Base):
    """What a data directory was indexed with (``segsearch.record``): one JSON value per key."""

    __tablename__ = "library"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class JobRow(Base):
    """An index job handed to a running server (``segsearch.api.jobs``)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued|running|completed|failed|cancelled
    request: Mapped[dict] = mapped_column(JSON)
    progress: Mapped[dict | None] = mapped_column(JSON)
    summary: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class SegmentRecord:
    """One segment of an image as the indexer computed it: a mask (``kind`` "object", its box, RLE
    and SAM's scores) or the whole image (``kind`` "image", ``mask_index`` -1, no mask); in a video,
    an object track (``kind`` "track", its best frame's box and mask) or a keyframe (``kind``
    "frame", ``mask_index`` -1 - k)."""

    id: str  # deterministic UUID: image content + pipeline fingerprint + mask index (= vector point id)
    kind: str
    mask_index: int
    x: int
    y: int
    w: int
    h: int
    area: int
    area_frac: float
    predicted_iou: float | None
    stability_score: float | None
    rle: dict | None
    start_s: float | None = None  # video segments (see SegmentRow)
    end_s: float | None = None
    best_s: float | None = None

    @property
    def bbox(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    def columns(self) -> dict:
        return asdict(self)

    def payload(self, image_id: str, paths: list[str], dirs: list[str]) -> dict:
        """The vector point's payload (what search filters on and returns without SQL)."""
        return {
            "image_id": image_id,
            "kind": self.kind,
            "area_frac": self.area_frac,
            "bbox": self.bbox,
            "mask_index": self.mask_index,
            "paths": paths,
            "dirs": dirs,
        }
