"""FastAPI dependencies, as ``Annotated`` aliases: a route asks for ``services: ServicesDep``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from segsearch.api.services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(request: Request, key: Annotated[str | None, Depends(_api_key_header)] = None) -> None:
    """``X-API-Key`` or ``Authorization: Bearer`` when the server has a key (``SEGSEARCH_API_KEY``)."""
    from segsearch.api.guard import key_problem

    bad = key_problem(key, request.headers.get("authorization"), request.app.state.services.settings.api_key)
    if bad is not None:
        raise bad
