"""``/metrics`` for Prometheus: request counts and latencies (prometheus-fastapi-instrumentator) plus
the library and its indexing, read at scrape time from the catalog and the job manager.

Each app gets its own registry (several apps in one process, as in tests, do not collide). Like the
health routes, ``/metrics`` is outside ``/v1`` and needs no API key: it holds counts, never content.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from segsearch.api.services import Services


class LibraryCollector:
    """Gauges of the library (images by status, segments) and of index jobs (by status; the running
    job's files done/total), and counters of what this server's index jobs processed."""

    def __init__(self, services_of):
        self.services_of = services_of  # () -> Services (set in the app's lifespan)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        svc: Services | None = self.services_of()
        if svc is None:
            return
        try:
            counts = svc.catalog.counts()
            by_status = svc.catalog.job_counts()
        except Exception:  # noqa: BLE001 - a scrape must not fail because a store is down
            return
        images = GaugeMetricFamily("segsearch_images", "Images in the library by status.", labels=["status"])
        for status in ("indexed", "pending", "failed"):
            images.add_metric([status], counts[status])
        yield images
        yield GaugeMetricFamily(
            "segsearch_segments", "Segments (objects and whole images) stored.", value=counts["segments"]
        )
        job_g = GaugeMetricFamily("segsearch_jobs", "Index and repair jobs by status.", labels=["status"])
        for status in ("queued", "running", "completed", "failed", "cancelled"):
            job_g.add_metric([status], by_status.get(status, 0))
        yield job_g
        live = svc.jobs.live_progress()
        done = GaugeMetricFamily("segsearch_job_files_done", "Files processed by the running job.", labels=["job"])
        total = GaugeMetricFamily("segsearch_job_files_total", "Files the running job will process.", labels=["job"])
        for job_id, p in live.items():
            done.add_metric([job_id], p.get("files_done", 0))
            if p.get("files_total") is not None:
                total.add_metric([job_id], p["files_total"])
        yield done
        yield total
        processed = svc.jobs.processed
        c = CounterMetricFamily(
            "segsearch_index_images", "Images this server's index jobs processed, by outcome.", labels=["outcome"]
        )
        for outcome in ("indexed", "skipped", "failed"):
            c.add_metric([outcome], processed.get(outcome, 0))
        yield c
        yield CounterMetricFamily(
            "segsearch_index_segments", "Segments this server's index jobs wrote.", value=processed.get("segments", 0)
        )


def install(app: FastAPI) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    registry = CollectorRegistry()
    registry.register(LibraryCollector(lambda: getattr(app.state, "services", None)))
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(app).expose(
        app, endpoint="/metrics", include_in_schema=False
    )
