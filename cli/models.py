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

    console = Console()
    cells = [_cells(r) for r in rows]
    if not console.is_terminal or console.width < 140:
        # a pipe or a narrow terminal: a table would cut the names every error points to, so one
        # block per model, the name whole on its own line's start
        width = max(len(c[0]) for c in cells)
        for c in cells:
            typer.echo(f"{c[0]:<{width}}  {c[1]:<4} here: {c[2]:<3}  {c[3]:<12} cost: {c[4]:<6} dim: {c[5]}")
            typer.echo(f"{'':<{width}}  weights: {c[6]}; hash: {c[7]}")
            typer.echo(f"{'':<{width}}  {c[8]}")
        return
    t = Table("name", "kind", "here", "licence", "cost", "dim", "weights", "hash", "description")
    t.columns[0].no_wrap = True
    for c in cells:
        t.add_row(*c)
    console.print(t)


def _cells(r: dict) -> list[str]:
    where = r["hub_repo"] or ("bundled" if r["bundled"] else (r["url"] or "-").rsplit("/", 1)[-1])
    return [
        r["name"],
        "sam2" if r.get("family") == "sam2" else r["kind"],
        "yes" if r["present"] else "no",
        r["licence"] or "-",
        r["cost"] or "-",
        str(r["dim"] or "-"),
        where,
        r["pin"],
        r["description"] + (f" (needs {r['needs']})" if r["needs"] else ""),
    ]


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
