"""Every error leaves as RFC 9457 problem+json."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from segsearch.errors import NotFoundError, QueryError, SegsearchError

PROBLEM = "application/problem+json"
log = logging.getLogger("segsearch.api")


class ProblemError(Exception):
    def __init__(self, status: int, title: str, detail: str | None = None, headers: dict | None = None):
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers


def problem(
    status: int, title: str, detail: str | None = None, instance: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:10]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError):
        return problem(exc.status, exc.title, exc.detail, request.url.path, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        from http import HTTPStatus

        title = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else "Error"
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
        return problem(exc.status_code, title, detail, request.url.path, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return problem(422, "Invalid request", _validation_detail(exc), request.url.path)

    @app.exception_handler(QueryError)
    async def _query(request: Request, exc: QueryError):
        if isinstance(exc, NotFoundError):
            return problem(404, "Not Found", str(exc), request.url.path)
        return problem(422, "Invalid request", str(exc), request.url.path)

    @app.exception_handler(SegsearchError)
    async def _unavailable(request: Request, exc: SegsearchError):
        # models or stores the server cannot use (weights missing offline, a store gone): the
        # request was fine, the service is not ready for it
        return problem(503, "Service unavailable", str(exc), request.url.path, {"Retry-After": "30"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return problem(500, "Internal Server Error", "an unexpected error occurred; it was logged", request.url.path)
