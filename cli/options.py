"""Options shared by several commands, and how a command reports an error.

Model and data options default to None so that "not given" can be told from "given": a library
remembers its models (``segsearch.record``), and only what the user gives overrides the record."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from segsearch.errors import SegsearchError

Data = Annotated[
    Optional[Path], typer.Option("--data", help="Data directory (env SEGSEARCH_DATA; default: ./segsearch-data).")
]
Sam = Annotated[
    Optional[str],
    typer.Option(
        "--sam",
        help="SAM model name or checkpoint path (default: the library's recorded model; sam-vit-b for a new library).",
    ),
]
Clip = Annotated[
    Optional[str],
    typer.Option(
        "--clip",
        help="CLIP model name or checkpoint path (default: the library's recorded model; clip-vit-b-32 for a "
        "new library).",
    ),
]
Device = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N (default: auto).")]
DbUrl = Annotated[Optional[str], typer.Option("--database-url", help="SQLAlchemy URL (default: SQLite in --data).")]
Backend = Annotated[Optional[str], typer.Option("--vector-backend", help="embedded | server (default: embedded).")]
QdrantUrl = Annotated[Optional[str], typer.Option("--qdrant-url", help="Qdrant URL for --vector-backend server.")]
Offline = Annotated[
    Optional[bool], typer.Option("--offline/--online", help="Never download weights (default: online).")
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def fail(exc: SegsearchError) -> None:
    """Print a user-facing error and exit with its code (2: configuration, 3: storage, 1: other)."""
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(exc.exit_code)


def server_for(settings):
    """The running ``segsearch serve`` that holds this data directory, if any (work goes to it)."""
    from segsearch.client import ServerClient

    return ServerClient.find(settings)
