"""FastAPI application factory: ``segsearch serve`` runs ``create_app(settings)`` under uvicorn."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response

from segsearch import __version__
from segsearch.settings import Settings

from segsearch.api import admin, errors, metrics, routes, scenes, videos
from segsearch.api.guard import Guard
from segsearch.api.services import Services

# a magnifier over a segment outline (SVG: browsers take it for /favicon.ico)
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><path d="M5 22l6-14 8 4 4 10z" '
    'fill="#2b7de9"/><circle cx="19" cy="13" r="8" fill="none" stroke="#222" stroke-width="3"/>'
    '<path d="M25 19l5 5" stroke="#222" stroke-width="4" stroke-linecap="round"/></svg>'
)


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    announce: bool = False,
    watch: list[str] | None = None,
) -> FastAPI:
    """``announce``: write ``<data>/server.json`` while serving, so ``segsearch index``/``search``/
    ``doctor``/``info`` on the same data directory hand their work to this server (``segsearch.client``).
    ``watch``: folders kept indexed (new, changed and deleted files become index jobs)."""
    settings = settings or (services.settings if services else Settings())
    import secrets

    owner_token = secrets.token_urlsafe(32)  # proves the data directory's owner (server.json, mode 0600)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = services or Services(settings)
        app.state.services = svc
        if watch:
            svc.add_roots(watch)
        announced = None
        if announce:
            from segsearch.client import announce as write_announcement

            announced = write_announcement(svc.settings, owner_token)
        svc.start_loading()  # in the background: /healthz and the page answer from the first second
        svc.jobs.start()
        watcher = None
        if watch:
            from segsearch.api.watch import Watcher

            watcher = Watcher(svc, watch)
            watcher.start()
        app.state.watcher = watcher
        yield
        if watcher is not None:
            watcher.stop()
        if announced is not None:
            announced.unlink(missing_ok=True)
        if services is None:
            svc.close()
        else:
            svc.stop_loading()
            svc.jobs.stop()

    from fastapi_offline import FastAPIOffline  # /docs and /redoc with their assets bundled: no CDN

    app = FastAPIOffline(
        title="segsearch",
        version=__version__,
        lifespan=lifespan,
        description="Search photo libraries at the level of individual objects (SAM + CLIP + Qdrant).",
        generate_unique_id_function=lambda route: route.name,
    )  # operationIds: search, get_segment, ...
    app.state.owner_token = owner_token
    app.state.watcher = None
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(scenes.router)
    app.include_router(videos.router)
    app.include_router(admin.router)

    app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_s)
    app.add_middleware(QueryGateMiddleware)
    app.add_middleware(Guard, settings=settings, owner_token=owner_token)  # host, origin, key, size: before any read
    metrics.install(app)  # outermost: counts the status clients receive, the guard's and the timeout's answers too
    app.openapi = lambda: _openapi_with_problems(app)

    @app.get("/healthz", tags=["health"])
    async def healthz():  # on the event loop: answers even when every worker thread is busy
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    def readyz():
        """Models loaded and stores reachable; when not, ``problem`` says which and why."""
        svc: Services = app.state.services
        checks = {"models": svc.ready}
        watcher = app.state.watcher
        if watcher is not None:
            checks["watch"] = watcher.alive
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
        body = {
            "status": "ready" if ok else "not ready",
            "checks": checks,
            "models": {"sam": svc.settings.sam, "clip": svc.clip_spec.name},
        }
        if watcher is not None and watcher.last_error:
            body["watch_error"] = watcher.last_error
        if not ok:
            failed = ", ".join(k for k, v in checks.items() if not v)
            body["problem"] = svc.load_error or ("models are loading" if not svc.ready else f"not working: {failed}")
            if not svc.ready and svc.next_load_at is not None:  # a failed load, retried in the background
                body["next_load_in_s"] = max(0, round(svc.next_load_at - time.time()))
        return JSONResponse(body, status_code=200 if ok else 503)

    for path, fn in (("/healthz", healthz), ("/readyz", readyz)):  # monitors often probe with HEAD
        app.add_api_route(path, fn, methods=["HEAD"], include_in_schema=False)

    page = files("segsearch.api").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page():
        return page

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():  # browsers ask for it on every page load; a 404 there is noise in every log
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    return app


# A request turned away because its work pool is saturated is answered after this pause: a client
# retrying in a loop (ignoring Retry-After) then sends one request a second instead of hundreds.
BUSY_HOLD_S = 1.0


class QueryGateMiddleware:
    """Counts search requests in flight, so a running index job yields to them (``api.jobs``), and
    turns away a scene query or a video frame (503 after ``BUSY_HOLD_S``) when its work pool is
    saturated: clients retrying in a loop then cost the event loop a header check and a timer,
    not a worker thread and a parsed body each."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        services = getattr(scope["app"].state, "services", None) if path else None
        if services is None or not path.startswith("/v1/"):
            return await self.app(scope, receive, send)
        pool = None
        if path == "/v1/search/scene":
            pool = services.scene_work
        elif path.endswith("/image.jpg") and b"t=" in scope.get("query_string", b""):
            pool = services.video_work
        if pool is not None and pool.saturated():
            import asyncio

            await asyncio.sleep(BUSY_HOLD_S)  # on the event loop, costs nothing; paces clients that ignore Retry-After
            response = errors.problem(
                503,
                "Server busy",
                "every worker for this kind of request is taken; try again",
                path,
                headers={"Retry-After": "2"},
            )
            return await response(scope, receive, send)
        if not path.startswith("/v1/search"):
            return await self.app(scope, receive, send)
        with services.jobs.gate:
            await self.app(scope, receive, send)


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
        response = errors.problem(
            503,
            "Request timed out",
            f"the request took longer than {self.timeout_s:g}s; try again",
            scope.get("path"),
            headers={"Retry-After": "1"},
        )
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
    comps.setdefault(
        "Problem",
        {
            "title": "Problem",
            "type": "object",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "instance": {"type": "string"},
            },
        },
    )
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
