"""FastAPI application factory: ``segsearch serve`` runs ``create_app(settings)`` under uvicorn."""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse

from segsearch import __version__
from segsearch.settings import Settings

from segsearch.api import errors, routes
from segsearch.api.services import Services


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> FastAPI:
    settings = settings or (services.settings if services else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = services or Services(settings)
        app.state.services = svc
        try:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(svc.load)
        except Exception:  # noqa: BLE001 - stay up and report not-ready instead of crashing
            errors.log.exception("model loading failed; /readyz will say so")
        yield
        if services is None:
            svc.close()

    app = FastAPI(title="segsearch", version=__version__, lifespan=lifespan,
                  description="Search photo libraries at the level of individual objects (SAM + CLIP + Qdrant).")
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    errors.install(app)
    app.include_router(routes.router)

    @app.get("/healthz", tags=["health"])
    def healthz():
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    def readyz():
        """Models loaded and stores reachable."""
        svc: Services = app.state.services
        checks = {"models": svc.ready}
        try:
            svc.catalog.counts()
            checks["sql"] = True
        except Exception:  # noqa: BLE001
            checks["sql"] = False
        try:
            svc.vectors.collections()
            checks["vectors"] = True
        except Exception:  # noqa: BLE001
            checks["vectors"] = False
        ok = all(checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)

    page = files("segsearch.api").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page():
        return page

    return app
