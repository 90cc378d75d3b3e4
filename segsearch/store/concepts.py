"""SQL records of concepts (``concepts``) and of the segments they tag (``segment_tags``); the
learning itself is in ``segsearch.concepts``. Every method is one short transaction."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, func, select

from segsearch.store.schema import ConceptRow, ImageRow, SegmentRow, SegmentTagRow
from segsearch.store.sql import Catalog


class ConceptStore:
    def __init__(self, catalog: Catalog):
        self.Session = catalog.Session

    def get(self, name: str) -> ConceptRow | None:
        with self.Session() as s:
            return s.get(ConceptRow, name)

    def all(self, collection: str | None = None) -> list[ConceptRow]:
        with self.Session() as s:
            q = select(ConceptRow).order_by(ConceptRow.name)
            if collection is not None:
                q = q.where(ConceptRow.collection == collection)
            return list(s.scalars(q))

    def require(self, names) -> None:
        """Every name is a concept of this library, else a NotFoundError that lists them (a tag
        filter naming no concept would otherwise look like a search that found nothing)."""
        from segsearch.errors import NotFoundError

        names = list(names or ())
        if not names:
            return
        known = {c.name for c in self.all()}
        unknown = [n for n in names if n not in known]
        if unknown:
            have = ", ".join(sorted(known)) or "none yet (segsearch concept learn)"
            raise NotFoundError(f"no concept named {unknown[0]!r} in this library; its concepts: {have}")

    def tag_counts(self) -> dict[str, int]:
        with self.Session() as s:
            return dict(s.execute(select(SegmentTagRow.concept, func.count()).group_by(SegmentTagRow.concept)).all())

    def tag_count(self, name: str) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count()).select_from(SegmentTagRow).where(SegmentTagRow.concept == name)))

    def save(self, row: ConceptRow, tags: list[SegmentTagRow]) -> list[str]:
        """Store the concept and replace the segments it tags, in one transaction. Returns every
        segment whose tags changed (tagged before or now), for the vector payload."""
        with self.Session.begin() as s:
            before = list(s.scalars(select(SegmentTagRow.segment_id).where(SegmentTagRow.concept == row.name)))
            s.merge(row)
            s.flush()
            s.execute(delete(SegmentTagRow).where(SegmentTagRow.concept == row.name))
            s.add_all(tags)
        return sorted(set(before) | {t.segment_id for t in tags})

    def delete(self, name: str) -> list[str] | None:
        """Remove the concept and its tags; the segments it had tagged (None: no such concept)."""
        with self.Session.begin() as s:
            row = s.get(ConceptRow, name)
            if row is None:
                return None
            before = list(s.scalars(select(SegmentTagRow.segment_id).where(SegmentTagRow.concept == name)))
            s.execute(delete(SegmentTagRow).where(SegmentTagRow.concept == name))
            s.delete(row)
        return before

    def tags_in(self, collection: str) -> dict[str, list[str]]:
        """Every tagged segment of a collection with its tags (what its vector payload should say)."""
        out: dict[str, list[str]] = {}
        with self.Session() as s:
            rows = s.execute(
                select(SegmentTagRow.segment_id, SegmentTagRow.concept)
                .join(SegmentRow, SegmentRow.id == SegmentTagRow.segment_id)
                .where(SegmentRow.collection == collection)
                .order_by(SegmentTagRow.concept)
            )
            for sid, name in rows:
                out.setdefault(sid, []).append(name)
        return out

    def image_sizes(self, image_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
        """(width, height) of these images."""
        ids = list(set(image_ids))
        out: dict[str, tuple[int, int]] = {}
        with self.Session() as s:
            for start in range(0, len(ids), 900):
                q = select(ImageRow.id, ImageRow.width, ImageRow.height).where(
                    ImageRow.id.in_(ids[start : start + 900])
                )
                for iid, w, h in s.execute(q):
                    out[iid] = (w or 1, h or 1)
        return out

    def tags_of(self, segment_ids: Iterable[str]) -> dict[str, list[str]]:
        """Each segment's full list of tags (segments without any are absent)."""
        ids = list(segment_ids)
        out: dict[str, list[str]] = {}
        with self.Session() as s:
            for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
                rows = s.execute(
                    select(SegmentTagRow.segment_id, SegmentTagRow.concept)
                    .where(SegmentTagRow.segment_id.in_(ids[start : start + 900]))
                    .order_by(SegmentTagRow.concept)
                )
                for sid, name in rows:
                    out.setdefault(sid, []).append(name)
        return out
