"""Index and repair jobs of a server, as rows in SQL (migration 0003): the part of ``Catalog``
that ``segsearch.api.jobs`` uses."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select, update

from segsearch.store.schema import JobRow, utcnow


class JobRecords:
    """Mixed into ``Catalog`` (which provides ``Session``)."""

    def add_job(self, job_id: str, kind: str, request: dict) -> JobRow:
        with self.Session.begin() as s:
            row = JobRow(id=job_id, kind=kind, status="queued", request=request, created_at=utcnow())
            s.add(row)
            return row

    def update_job(self, job_id: str, *, if_status: str | None = None, **values) -> bool:
        """Update a job's row; with ``if_status``, only while it has that status (False: it had not)."""
        with self.Session.begin() as s:
            q = update(JobRow).where(JobRow.id == job_id)
            if if_status is not None:
                q = q.where(JobRow.status == if_status)
            return (s.execute(q.values(**values)).rowcount or 0) > 0

    def get_job(self, job_id: str) -> JobRow | None:
        with self.Session() as s:
            return s.get(JobRow, job_id)

    def jobs(
        self, statuses: Sequence[str] | None = None, limit: int = 100, offset: int = 0, newest_first: bool = False
    ) -> list[JobRow]:
        with self.Session() as s:
            order = (JobRow.created_at.desc(), JobRow.id.desc()) if newest_first else (JobRow.created_at, JobRow.id)
            q = select(JobRow).order_by(*order)
            if statuses:
                q = q.where(JobRow.status.in_(list(statuses)))
            return list(s.scalars(q.offset(offset).limit(limit)))

    def delete_jobs(self, statuses: Sequence[str], finished_before) -> int:
        """Forget finished jobs older than ``finished_before`` (job records expire)."""
        with self.Session.begin() as s:
            res = s.execute(
                delete(JobRow).where(JobRow.status.in_(list(statuses)), JobRow.finished_at < finished_before)
            )
            return res.rowcount or 0

    def job_counts(self) -> dict[str, int]:
        """Jobs by status (one grouped count, for /metrics scrapes)."""
        with self.Session() as s:
            return dict(s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all())
