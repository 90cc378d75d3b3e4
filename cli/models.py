"""``segsearch models list|download``: the model registry and its checkpoints."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from segsearch.errors import SegsearchError

from segsearch.cli.options import Json, fail

app = typer.Typer(help="List and download model checkpoints.", no_args_is_help=True)


@app.command("list")
def models_list(json_out: Json = False):
    """Registered models: licence, relative cost, where the weights come from, whether their hash is
    pinned, and whether they are here already."""
    from segsearch.library import make_settings
    from segsearch.models.registry import get_spec, list_specs
    from segsearch.models.weights import is_present

    settings = make_settings()
    rows = list_specs()
    for r in rows:
        spec = get_spec(r["name"])
        r["present"] = spec.weights is not None and is_present(spec.weights, settings.checkpoints)
    if json_out:
        typer.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("name", "kind", "here", "licence", "cost", "dim", "weights", "hash", "description")
    for r in rows:
        where = r["hub_repo"] or ("bundled" if r["bundled"] else (r["url"] or "-").rsplit("/", 1)[-1])
        t.add_row(
            r["name"],
            "sam2" if r.get("family") == "sam2" else r["kind"],
            "yes" if r["present"] else "no",
            r["licence"] or "-",
            r["cost"] or "-",
            str(r["dim"] or "-"),
            where,
            r["pin"],
            r["description"] + (f" (needs {r['needs']})" if r["needs"] else ""),
        )
    Console().print(t)


@app.command("download")
def models_download(name: Annotated[str, typer.Argument(help="Registered model name.")]):
    """Download (or verify) a registered model's checkpoint."""
    from segsearch.library import make_settings
    from segsearch.models.registry import get_spec
    from segsearch.models.weights import ensure_weights

    try:
        settings = make_settings()
        spec = get_spec(name)
        if spec.weights is None:
            typer.echo(f"{name} has no weights to download (random init)")
            return
        path = ensure_weights(
            spec.weights, settings.checkpoints, offline=settings.offline, progress=sys.stderr.isatty()
        )
    except SegsearchError as exc:
        fail(exc)
    typer.echo(f"{name}: {path} (SHA-256 verified)")
