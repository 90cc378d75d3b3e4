"""``segsearch search`` and ``segsearch info``: run here, or asked of a running server."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from segsearch.errors import SegsearchError

from segsearch.cli.options import Backend, Clip, Data, DbUrl, Device, Json, Offline, QdrantUrl, fail, server_for


def search(
    query: Annotated[Optional[str], typer.Argument(help="Text query, e.g. 'red car'.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Query by example image instead.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=1000)] = 10,
    kind: Annotated[Optional[str], typer.Option(help="object | image (default: both)")] = None,
    path_prefix: Annotated[Optional[str], typer.Option(help="Only images under this folder.")] = None,
    data: Data = None,
    clip: Clip = None,
    device: Device = None,
    database_url: DbUrl = None,
    vector_backend: Backend = None,
    qdrant_url: QdrantUrl = None,
    offline: Offline = None,
    json_out: Json = False,
):
    """Search the indexed segments by text or by example image (with the library's CLIP model)."""
    from segsearch.errors import ConfigError
    from segsearch.library import Library, make_settings

    if (query is None) == (image is None):
        typer.secho("error: give a text QUERY or --image FILE (one of them)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        if kind not in (None, "object", "image"):
            raise ConfigError("--kind must be 'object' or 'image'")
        settings = make_settings(
            data=data,
            clip=clip,
            device=device,
            database_url=database_url,
            vector_backend=vector_backend,
            qdrant_url=qdrant_url,
            offline=offline,
        )
        server = server_for(settings)
        if server is not None:
            hits = server.search_hits(settings, query, image, top_k=top_k, kind=kind, path_prefix=path_prefix)
        else:
            filters = {"kind": kind, "path_prefix": str(Path(path_prefix).resolve()) if path_prefix else None}
            with Library(settings=settings) as library:
                hits = [h.to_dict() for h in library.search(query, image=image, top_k=top_k, filters=filters)]
    except SegsearchError as exc:
        fail(exc)
    if json_out:
        typer.echo(json.dumps(hits))
        return
    if not hits:
        typer.echo("no hits")
    for h in hits:
        x, y, w, h_ = h["bbox"]
        typer.echo(f"{h['score']:.3f}  {h['kind']:6s}  {h['image_path']}  box=({x},{y},{w},{h_})  {h['segment_id']}")


def info(
    data: Data = None,
    database_url: DbUrl = None,
    vector_backend: Backend = None,
    qdrant_url: QdrantUrl = None,
    json_out: Json = False,
):
    """The library: recorded models and settings, counts, last run, size on disk."""
    from segsearch.library import Library, make_settings

    try:
        settings = make_settings(
            data=data, database_url=database_url, vector_backend=vector_backend, qdrant_url=qdrant_url
        )
        server = server_for(settings)
        if server is not None:
            d = server.info()
            d["server"] = server.url
        else:
            with Library(settings=settings) as library:
                d = library.info()
    except SegsearchError as exc:
        fail(exc)
    if json_out:
        typer.echo(json.dumps(d))
        return
    lib, c = d["library"], d["counts"]
    typer.echo(f"library   {d['data']}" + (f"  (served by {d['server']})" if d.get("server") else ""))
    if not lib.get("sam"):
        typer.echo("models    none recorded yet (index something first)")
    else:
        for kind in ("sam", "clip"):
            m = lib[kind]
            sha = (m.get("sha256") or "random init")[:16]
            typer.echo(f"{kind:<9} {m['name']}  ({m['source']}, sha256 {sha})")
        typer.echo("amg       " + ", ".join(f"{k}={v}" for k, v in lib["amg"].items()))
        typer.echo("crop      " + ", ".join(f"{k}={v}" for k, v in lib["crop"].items()))
    typer.echo(f"images    {c['images']} ({c['indexed']} indexed, {c['pending']} pending, {c['failed']} failed)")
    typer.echo(f"segments  {c['segments']}  vectors {d['vectors']}")
    r = d.get("last_run")
    if r:
        typer.echo(
            f"last run  #{r['id']} {r['status']} {r['started_at']}: {r['indexed']} indexed, "
            f"{r['skipped']} skipped, {r['failed']} failed"
        )
    typer.echo(f"on disk   {d['size_bytes']['total'] / 1e6:.1f} MB")


class ExportFormat(str, Enum):
    jsonl = "jsonl"
    coco = "coco"
    parquet = "parquet"


def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (replaced when complete).")],
    format: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="jsonl | coco (pycocotools-loadable) | parquet (+ vectors).")
    ] = "jsonl",
    kind: Annotated[Optional[str], typer.Option(help="object | image (coco: object unless given).")] = None,
    path_prefix: Annotated[Optional[str], typer.Option(help="Only images under this path.")] = None,
    data: Data = None,
    database_url: DbUrl = None,
    vector_backend: Backend = None,
    qdrant_url: QdrantUrl = None,
    json_out: Json = False,
):
    """Export the library's segments (masks as COCO RLE) for other tools."""
    from segsearch.library import Library, make_settings

    try:
        settings = make_settings(
            data=data, database_url=database_url, vector_backend=vector_backend, qdrant_url=qdrant_url
        )
        with Library(settings=settings) as library:
            n = library.export(out, format=ExportFormat(format).value, kind=kind, path_prefix=path_prefix)
    except SegsearchError as exc:
        fail(exc)
    if json_out:
        typer.echo(json.dumps({"written": n, "out": str(out), "format": ExportFormat(format).value}))
    else:
        typer.echo(f"wrote {n} segments to {out} ({ExportFormat(format).value})")
