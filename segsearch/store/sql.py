"""Records of images, their paths, segments and indexing runs (SQLAlchemy 2, Alembic schema).

An image is identified by the SHA-256 of its bytes. Its ``status`` says where it stands for
the pipeline fingerprint it was last processed with:

* ``pending``  – work started (or was interrupted); vectors may be partly written.
* ``indexed``  – its segments are in SQL *and* their vectors were durably written.
* ``failed``   – could not be decoded/processed; ``error`` says why.

Several indexer processes may share one database: before working on an image a process *claims*
it (one row in ``claims``, keyed by the image id, inserted or taken over atomically with
``INSERT … ON CONFLICT … DO UPDATE … WHERE expired``). A claim is a lease: the holder renews it
while it works and deletes it when the image is committed; a crashed holder's claims expire and
the next process to ask takes them over.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import create_engine, delete, event, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from segsearch.errors import StorageError
from segsearch.store.jobs import JobRecords
from segsearch.store.schema import (  # noqa: F401 - Base and the rows are this module's vocabulary
    Base,
    ClaimRow,
    ImagePathRow,
    ImageRow,
    JobRow,
    LibraryRow,
    RunRow,
    SegmentRecord,
    SegmentRow,
    SegmentTagRow,
    TrackFrameRow,
    as_utc,
    utcnow,
)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the API) never block the indexer
    cur.execute("PRAGMA synchronous=FULL")  # an 'indexed' status survives power loss
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("postgresql"):
        # several processes (indexers, API workers) share the server: drop dead connections quietly
        engine = create_engine(url, future=True, pool_pre_ping=True, pool_size=5, max_overflow=5)
    else:
        engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


_MIGRATION_LOCK_KEY = 0x5E65_EA2C  # PostgreSQL advisory lock id for schema migrations


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic (the only way the schema is created)."""
    from importlib.resources import files

    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("segsearch.migrations")))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        # Several processes may open a new database at once (indexers started together): the
        # first takes a lock for the whole transaction, the others wait and then find the schema
        # at head. Both databases have transactional DDL, so a half-made schema is never visible.
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        elif engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock before alembic reads its version
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


class Catalog(JobRecords):
    """Repository over the SQL records. Every method is one short transaction."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.Session = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Catalog:
        try:
            engine = make_engine(url)
            if upgrade:
                migrate(engine)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot open the database {url}: {exc}") from exc
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # --- paths and images -----------------------------------------------------------------
    def lookup_path(self, path: str) -> tuple[ImagePathRow, ImageRow] | None:
        with self.Session() as s:
            row = s.get(ImagePathRow, path)
            if row is None:
                return None
            return row, s.get(ImageRow, row.image_id)

    def register_file(self, path: str, image_id: str, size_bytes: int, mtime_ns: int) -> list[str]:
        """Record that ``path`` holds the bytes ``image_id``. Creates the image (pending) if new.
        Returns ids of images that no longer have any path (their file changed): the caller
        removes their vectors and then calls ``delete_image``. Safe when several indexers register
        the same file at once: the loser of an insert race retries and finds the winner's rows."""
        from sqlalchemy.exc import IntegrityError

        for _ in range(2):
            try:
                return self._register_file(path, image_id, size_bytes, mtime_ns)
            except IntegrityError:
                pass
        return self._register_file(path, image_id, size_bytes, mtime_ns)

    def _register_file(self, path, image_id, size_bytes, mtime_ns) -> list[str]:
        with self.Session.begin() as s:
            if s.get(ImageRow, image_id) is None:
                s.add(ImageRow(id=image_id, size_bytes=size_bytes, status="pending"))
                s.flush()
            row = s.get(ImagePathRow, path)
            previous = None
            if row is None:
                s.add(ImagePathRow(path=path, image_id=image_id, size_bytes=size_bytes, mtime_ns=mtime_ns))
            else:
                previous = row.image_id if row.image_id != image_id else None
                row.image_id, row.size_bytes, row.mtime_ns = image_id, size_bytes, mtime_ns
            s.flush()
            if previous is not None:
                left = s.scalar(select(func.count()).select_from(ImagePathRow).where(ImagePathRow.image_id == previous))
                if not left:
                    return [previous]
        return []

    def get_image(self, image_id: str) -> ImageRow | None:
        with self.Session() as s:
            return s.get(ImageRow, image_id)

    def image_paths(self, image_id: str) -> list[str]:
        with self.Session() as s:
            return list(
                s.scalars(
                    select(ImagePathRow.path).where(ImagePathRow.image_id == image_id).order_by(ImagePathRow.path)
                )
            )

    def paths_by_image(self, image_ids: Iterable[str]) -> dict[str, list[str]]:
        """The paths of many images in one query, by image id (each list sorted)."""
        out: dict[str, list[str]] = {}
        with self.Session() as s:
            rows = s.execute(
                select(ImagePathRow.image_id, ImagePathRow.path)
                .where(ImagePathRow.image_id.in_(list(set(image_ids))))
                .order_by(ImagePathRow.path)
            )
            for image_id, path in rows:
                out.setdefault(image_id, []).append(path)
        return out

    def image_diagonals(self, image_ids: Iterable[str]) -> dict[str, float]:
        """Each image's diagonal in pixels, by image id (images of unknown size left out)."""
        with self.Session() as s:
            rows = s.execute(
                select(ImageRow.id, ImageRow.width, ImageRow.height).where(ImageRow.id.in_(list(set(image_ids))))
            )
            return {i: float(math.hypot(w, h)) for i, w, h in rows if w and h}

    def mark_pending(self, image_id: str, fingerprint: str, collection: str) -> None:
        with self.Session.begin() as s:
            s.execute(
                update(ImageRow)
                .where(ImageRow.id == image_id)
                .values(
                    status="pending", error=None, fingerprint=fingerprint, collection=collection, updated_at=utcnow()
                )
            )

    def mark_failed(self, image_id: str, error: str, fingerprint: str | None = None) -> None:
        with self.Session.begin() as s:
            s.execute(
                update(ImageRow)
                .where(ImageRow.id == image_id)
                .values(status="failed", error=error, fingerprint=fingerprint, updated_at=utcnow())
            )

    def segment_refs(self, image_id: str) -> list[tuple[str, str]]:
        """(segment id, collection) of every stored segment of an image."""
        with self.Session() as s:
            return [
                tuple(r)
                for r in s.execute(select(SegmentRow.id, SegmentRow.collection).where(SegmentRow.image_id == image_id))
            ]

    def commit_segments(
        self,
        image_id: str,
        *,
        fingerprint: str,
        collection: str,
        width: int,
        height: int,
        fmt: str,
        segments: Sequence[SegmentRecord],
        meta: dict | None = None,
        tags: Sequence[SegmentTagRow | TrackFrameRow] = (),
    ) -> None:
        """Replace the image's segments (and the rows that hang on them: concept tags, a video's
        track frames) and mark it indexed, with its photo metadata, atomically. Call only after its
        vectors were durably written."""
        with self.Session.begin() as s:
            s.execute(delete(SegmentTagRow).where(SegmentTagRow.image_id == image_id))
            s.execute(delete(TrackFrameRow).where(TrackFrameRow.image_id == image_id))
            s.execute(delete(SegmentRow).where(SegmentRow.image_id == image_id))
            s.add_all(
                [
                    SegmentRow(image_id=image_id, fingerprint=fingerprint, collection=collection, **seg.columns())
                    for seg in segments
                ]
            )
            s.add_all(list(tags))
            s.execute(
                update(ImageRow)
                .where(ImageRow.id == image_id)
                .values(
                    status="indexed",
                    error=None,
                    fingerprint=fingerprint,
                    collection=collection,
                    width=width,
                    height=height,
                    format=fmt,
                    n_segments=len(segments),
                    indexed_at=utcnow(),
                    updated_at=utcnow(),
                    **(meta or {}),
                )
            )

    def delete_image(self, image_id: str) -> None:
        with self.Session.begin() as s:
            s.execute(delete(SegmentTagRow).where(SegmentTagRow.image_id == image_id))
            s.execute(delete(TrackFrameRow).where(TrackFrameRow.image_id == image_id))
            s.execute(delete(SegmentRow).where(SegmentRow.image_id == image_id))
            s.execute(delete(ImagePathRow).where(ImagePathRow.image_id == image_id))
            s.execute(delete(ImageRow).where(ImageRow.id == image_id))

    # --- segments -----------------------------------------------------------------------------
    def get_segments(self, ids: Iterable[str]) -> dict[str, SegmentRow]:
        ids = list(ids)
        with self.Session() as s:
            return {r.id: r for r in s.scalars(select(SegmentRow).where(SegmentRow.id.in_(ids)))}

    def image_segments(self, image_id: str) -> list[SegmentRow]:
        with self.Session() as s:
            return list(
                s.scalars(select(SegmentRow).where(SegmentRow.image_id == image_id).order_by(SegmentRow.mask_index))
            )

    def iter_indexed_segments(self, batch: int = 500) -> Iterable[tuple[ImageRow, list[SegmentRow]]]:
        """Every indexed image with its segments, in image id order, a batch of images at a time."""
        after = ""
        while True:
            with self.Session() as s:
                images = list(
                    s.scalars(
                        select(ImageRow)
                        .where(ImageRow.status == "indexed", ImageRow.id > after)
                        .order_by(ImageRow.id)
                        .limit(batch)
                    )
                )
                if not images:
                    return
                rows: dict[str, list[SegmentRow]] = {im.id: [] for im in images}
                for r in s.scalars(
                    select(SegmentRow)
                    .where(SegmentRow.image_id.in_(list(rows)))
                    .order_by(SegmentRow.image_id, SegmentRow.mask_index)
                ):
                    rows[r.image_id].append(r)
            yield from ((im, rows[im.id]) for im in images)
            after = images[-1].id

    def segment_ids(self, collection: str | None = None) -> set[str]:
        with self.Session() as s:
            q = select(SegmentRow.id)
            if collection:
                q = q.where(SegmentRow.collection == collection)
            return set(s.scalars(q))

    def counts(self) -> dict[str, int]:
        with self.Session() as s:
            by_status = dict(s.execute(select(ImageRow.status, func.count()).group_by(ImageRow.status)).all())
            return {
                "images": sum(by_status.values()),
                "indexed": by_status.get("indexed", 0),
                "pending": by_status.get("pending", 0),
                "failed": by_status.get("failed", 0),
                "segments": s.scalar(select(func.count()).select_from(SegmentRow)) or 0,
                "paths": s.scalar(select(func.count()).select_from(ImagePathRow)) or 0,
                "videos": s.scalar(
                    select(func.count())
                    .select_from(ImageRow)
                    .where(ImageRow.media == "video", ImageRow.status == "indexed")
                )
                or 0,
            }

    # --- maintenance (segsearch doctor) ----------------------------------------------------------
    def images_by_status(self, status: str) -> list[ImageRow]:
        with self.Session() as s:
            return list(s.scalars(select(ImageRow).where(ImageRow.status == status).order_by(ImageRow.id)))

    def segment_owner_map(self, collection: str) -> dict[str, str]:
        """segment id -> image id, for the segments stored in one vector collection."""
        with self.Session() as s:
            return dict(
                s.execute(select(SegmentRow.id, SegmentRow.image_id).where(SegmentRow.collection == collection)).all()
            )

    def segment_collections(self) -> list[str]:
        with self.Session() as s:
            return sorted(s.scalars(select(SegmentRow.collection).distinct()))

    def all_paths(self) -> list[tuple[str, str]]:
        """(path, image id) of every known file."""
        with self.Session() as s:
            return [
                tuple(r)
                for r in s.execute(select(ImagePathRow.path, ImagePathRow.image_id).order_by(ImagePathRow.path))
            ]

    def delete_path(self, path: str) -> None:
        with self.Session.begin() as s:
            s.execute(delete(ImagePathRow).where(ImagePathRow.path == path))

    # --- claims (several indexers sharing one database) ----------------------------------------------
    def claim(self, image_id: str, worker: str, lease_s: float) -> bool:
        """Take the image for ``worker`` unless another live worker holds it. Atomic on SQLite and
        PostgreSQL: a new row, or a takeover of an expired (or our own) claim, in one statement."""
        now = utcnow()
        expires = now + dt.timedelta(seconds=lease_s)
        table = ClaimRow.__table__
        stmt = self._insert()(table).values(image_id=image_id, worker=worker, claimed_at=now, expires_at=expires)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.image_id],
            set_={"worker": worker, "claimed_at": now, "expires_at": expires},
            where=(table.c.expires_at < now) | (table.c.worker == worker),
        ).returning(table.c.worker)
        with self.engine.begin() as conn:  # a row comes back only when we inserted or took over
            return conn.execute(stmt).first() is not None

    def take_over(self, image_id: str, holder: str, worker: str, lease_s: float) -> bool:
        """Move ``holder``'s claim to ``worker`` (the caller knows the holder is dead); False when the
        claim changed hands meanwhile."""
        now = utcnow()
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    update(ClaimRow.__table__)
                    .where(ClaimRow.image_id == image_id, ClaimRow.worker == holder)
                    .values(worker=worker, claimed_at=now, expires_at=now + dt.timedelta(seconds=lease_s))
                    .returning(ClaimRow.worker)
                ).first()
                is not None
            )

    def renew_claims(self, worker: str, lease_s: float) -> int:
        """Extend every claim the worker holds (its heartbeat)."""
        with self.Session.begin() as s:
            return s.execute(
                update(ClaimRow)
                .where(ClaimRow.worker == worker)
                .values(expires_at=utcnow() + dt.timedelta(seconds=lease_s))
            ).rowcount

    def release_claim(self, image_id: str, worker: str) -> None:
        with self.Session.begin() as s:
            s.execute(delete(ClaimRow).where(ClaimRow.image_id == image_id, ClaimRow.worker == worker))

    def release_worker_claims(self, worker: str) -> int:
        with self.Session.begin() as s:
            return s.execute(delete(ClaimRow).where(ClaimRow.worker == worker)).rowcount

    def live_claims(self) -> set[str]:
        """Images some indexer is working on right now (unexpired claims)."""
        with self.Session() as s:
            return set(s.scalars(select(ClaimRow.image_id).where(ClaimRow.expires_at > utcnow())))

    def claim_holder(self, image_id: str) -> ClaimRow | None:
        """The live claim on an image, if any (expired claims count as none)."""
        with self.Session() as s:
            row = s.get(ClaimRow, image_id)
            if row is None:
                return None
            return row if as_utc(row.expires_at) > utcnow() else None

    # --- runs ---------------------------------------------------------------------------------
    def start_run(self, settings: dict) -> int:
        with self.Session.begin() as s:
            run = RunRow(settings=settings, status="running")
            s.add(run)
            s.flush()
            return run.id

    def finish_run(
        self, run_id: int, *, status: str, indexed: int, skipped: int, failed: int, segments: int, failures: list[dict]
    ) -> None:
        with self.Session.begin() as s:
            s.execute(
                update(RunRow)
                .where(RunRow.id == run_id)
                .values(
                    status=status,
                    finished_at=utcnow(),
                    indexed=indexed,
                    skipped=skipped,
                    failed=failed,
                    segments=segments,
                    failures=failures,
                )
            )

    def get_run(self, run_id: int) -> RunRow | None:
        with self.Session() as s:
            return s.get(RunRow, run_id)

    def has_indexed(self) -> bool:
        with self.Session() as s:
            return s.scalar(select(ImageRow.id).where(ImageRow.status == "indexed").limit(1)) is not None

    def last_run(self) -> RunRow | None:
        with self.Session() as s:
            return s.scalar(select(RunRow).order_by(RunRow.id.desc()).limit(1))

    # --- the library record -----------------------------------------------------------------
    def library(self) -> dict[str, dict]:
        with self.Session() as s:
            return {r.key: r.value for r in s.scalars(select(LibraryRow))}

    def set_library(self, values: dict[str, dict]) -> None:
        """Replace the recorded keys given, in one transaction. An upsert: several indexers starting
        together on a new database all record (the same) models without colliding."""
        table = LibraryRow.__table__
        insert = self._insert()
        now = utcnow()
        with self.engine.begin() as conn:
            for key, value in values.items():
                stmt = insert(table).values(key=key, value=value, updated_at=now)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[table.c.key], set_={"value": stmt.excluded.value, "updated_at": now}
                    )
                )

    def _insert(self):
        """The dialect's INSERT, which knows ON CONFLICT (SQLite and PostgreSQL)."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert
