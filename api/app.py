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

    app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_s)
    app.openapi = lambda: _openapi_with_problems(app)

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


class TimeoutMiddleware:
    """A request that runs past ``timeout_s`` before sending anything is answered 503 problem+json
    (Retry-After) at once. Its handler is not cancelled (a worker thread cannot be interrupted, and
    waiting for the cancellation would stall this request too): it finishes in the background and
    its response is dropped. Other requests never wait for it."""

    def __init__(self, app, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope, receive, send):
        import asyncio

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "abandoned": False}

        async def guarded_send(message):
            if state["abandoned"]:
                return
            state["started"] = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
        if task in done or state["started"]:
            return await task
        state["abandoned"] = True
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        response = errors.problem(503, "Request timed out",
                                  f"the request took longer than {self.timeout_s:g}s; try again",
                                  scope.get("path"), headers={"Retry-After": "1"})
        await response(scope, receive, send)


def _openapi_with_problems(app: FastAPI) -> dict:
    """FastAPI's schema, with every error response documented as it is sent: RFC 9457
    application/problem+json (FastAPI would say application/json)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    ref = {"$ref": "#/components/schemas/Problem"}
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    comps.setdefault("Problem", {"title": "Problem", "type": "object", "required": ["type", "title", "status"],
                                 "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                                                "status": {"type": "integer"}, "detail": {"type": "string"},
                                                "instance": {"type": "string"}}})
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            for code, resp in list(responses.items()):
                if code[0] in "45":
                    resp["content"] = {errors.PROBLEM: {"schema": ref}}
            for code, desc in (("4XX", "Client error (problem+json)"), ("5XX", "Server error (problem+json)")):
                responses.setdefault(code, {"description": desc, "content": {errors.PROBLEM: {"schema": ref}}})
    for unused in ("HTTPValidationError", "ValidationError"):
        comps.pop(unused, None)
    app.openapi_schema = schema
    return schema
