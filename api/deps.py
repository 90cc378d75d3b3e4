"""FastAPI dependencies, as ``Annotated`` aliases: a route asks for ``services: ServicesDep``.

``require_read`` / ``require_admin`` document the keys in OpenAPI and hold a route to its access
level; ``Guard`` has already checked it from the headers before the body was read (the same
``access_problem``), and leaves the level it granted in ``request.state.access``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from segsearch.api.guard import ADMIN, OWNER, READ, access_problem
from segsearch.api.services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The read key, or the admin key (also as a Bearer token)"
)


def _access(request: Request, need: int) -> int:
    granted = getattr(request.state, "access", None)  # the guard's answer for these headers
    if granted is not None and granted >= need:
        return granted
    headers = {k.lower(): v for k, v in request.headers.items()}
    access, bad = access_problem(
        headers, request.app.state.services.settings, getattr(request.app.state, "owner_token", None), need
    )
    if bad is not None:
        raise bad
    return access


def require_read(request: Request, key: Annotated[str | None, Depends(_api_key_header)] = None) -> None:
    """The read key (``SEGSEARCH_API_KEY``) or the admin key, when the server has keys."""
    request.state.access = _access(request, READ)


def require_admin(request: Request, key: Annotated[str | None, Depends(_api_key_header)] = None) -> None:
    """The admin key (``SEGSEARCH_ADMIN_KEY``); a keyless server takes anyone its host check lets in."""
    request.state.access = _access(request, ADMIN)


def is_owner(request: Request) -> bool:
    """The data directory's owner (the CLI, with ``server.json``'s token): job paths may leave the roots."""
    return getattr(request.state, "access", 0) >= OWNER
