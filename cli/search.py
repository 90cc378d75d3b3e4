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
    not_: Annotated[
        Optional[str], typer.Option("--not", help="Push results away from this text, e.g. --not 'toy car'.")
    ] = None,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Only hits scoring at least this.")] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, max=10_000, help="Skip this many hits (paging).")] = 0,
    by_image: Annotated[
        bool, typer.Option("--by-image", help="Group hits per image (its best segments, up to 3 each).")
    ] = False,
    kind: Annotated[
        Optional[str], typer.Option(help="object | image (photos), track | frame (videos) (default: all)")
    ] = None,
    media: Annotated[Optional[str], typer.Option(help="photo | video: only photos' or videos' segments.")] = None,
    path_prefix: Annotated[Optional[str], typer.Option(help="Only images under this folder.")] = None,
    tag: Annotated[list[str], typer.Option("--tag", help="Only segments this concept tagged (repeat: all).")] = [],  # noqa: B006
    taken_after: Annotated[Optional[str], typer.Option(help="Photos taken after (EXIF; ISO date/time).")] = None,
    taken_before: Annotated[Optional[str], typer.Option(help="Photos taken before (EXIF; ISO date/time).")] = None,
    camera: Annotated[Optional[str], typer.Option(help="Camera make, model or both (EXIF), any case.")] = None,
    near: Annotated[Optional[str], typer.Option(help="'LAT,LON,KM': photos taken within KM of a point.")] = None,
    scene: Annotated[
        Optional[Path], typer.Option("--scene", help="A scene query (JSON, the body of POST /v1/search/scene).")
    ] = None,
    and_: Annotated[
        list[str], typer.Option("--and", help="Another object the image must hold too (repeat): a scene query.")
    ] = [],  # noqa: B006
    relation: Annotated[
        list[str], typer.Option("--relation", help="'0 left_of 1' between the query (0) and the --and objects (1...).")
    ] = [],  # noqa: B006
    data: Data = None,
    clip: Clip = None,
    device: Device = None,
    database_url: DbUrl = None,
    vector_backend: Backend = None,
    qdrant_url: QdrantUrl = None,
    offline: Offline = None,
    json_out: Json = False,
):
    """Search the indexed segments by text or by example image (with the library's CLIP model), or
    for images holding several objects in given relations (--and/--relation, or --scene FILE)."""
    from segsearch.errors import ConfigError
    from segsearch.library import Library, make_settings

    if scene is not None or and_ or relation:
        store = (data, clip, database_url, vector_backend, qdrant_url)
        return _scene(query, scene, and_, relation, top_k, *store, json_out)
    if (query is None) == (image is None):
        typer.secho("error: give a text QUERY or --image FILE (one of them)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        if kind not in (None, "object", "image", "track", "frame"):
            raise ConfigError("--kind must be 'object', 'image', 'track' or 'frame'")
        if media not in (None, "photo", "video"):
            raise ConfigError("--media must be 'photo' or 'video'")
        settings = make_settings(
            data=data,
            clip=clip,
            device=device,
            database_url=database_url,
            vector_backend=vector_backend,
            qdrant_url=qdrant_url,
            offline=offline,
        )
        filters = _filters(kind, path_prefix, tag, taken_after, taken_before, camera, near, media)
        ask = {
            "top_k": top_k,
            "negative_text": not_,
            "offset": offset,
            "score_threshold": min_score,
            "group_by_image": by_image,
        }
        import logging
        import time

        log, t0 = logging.getLogger("segsearch.search"), time.perf_counter()
        server = server_for(settings)
        if server is not None:
            log.info("asking the running server %s", server.url, extra={"fields": {"event": "search_via_server"}})
            page = server.search_page(settings, query, image, filters=filters, **ask)
        else:
            log.info(
                "searching here (no server is running on this library)", extra={"fields": {"event": "search_here"}}
            )
            from segsearch.api.schemas import Filters

            filters = Filters(**filters).to_filter()
            with Library(settings=settings) as library:
                got = library.search_page(query, image=image, filters=filters, **ask)
            groups = None
            if got.groups is not None:
                groups = [
                    {"image_id": g.image_id, "image_path": g.image_path, "score": g.score}
                    | {"hits": [h.to_dict() for h in g.hits]}
                    for g in got.groups
                ]
            page = {"hits": [h.to_dict() for h in got.hits], "groups": groups, "next_offset": got.next_offset}
        log.info(
            "%d hits in %.2f s",
            len(page["hits"]),
            time.perf_counter() - t0,
            extra={"fields": {"event": "search_done", "hits": len(page["hits"]), "seconds": time.perf_counter() - t0}},
        )
    except SegsearchError as exc:
        fail(exc)
    if json_out:  # hits as before; with --by-image, the groups
        typer.echo(json.dumps(page["groups"] if by_image else page["hits"]))
        return
    if not page["hits"]:
        typer.echo("no hits" + (f" scoring {min_score} or more" if min_score is not None else ""))
    if by_image:
        for g in page["groups"] or []:
            typer.echo(f"{g['score']:.3f}  {g['image_path']}")
            for h in g["hits"]:
                typer.echo("    " + _hit_line(h))
    else:
        for h in page["hits"]:
            typer.echo(_hit_line(h))
    if page.get("next_offset") is not None:
        typer.echo(f"(more: --offset {page['next_offset']})")


def _hit_line(h: dict) -> str:
    x, y, w, h_ = h["bbox"]
    when = ""
    if h.get("kind") == "track":  # a video's object: its span, and the frame its box is from
        when = f"  {_clock(h['start_s'])}-{_clock(h['end_s'])} (box at {_clock(h['best_s'])})"
    elif h.get("kind") == "frame":
        when = f"  at {_clock(h['start_s'])}"
    return f"{h['score']:.3f}  {h['kind']:6s}  {h['image_path']}{when}  box=({x},{y},{w},{h_})  {h['segment_id']}"


def _clock(s: float) -> str:
    """Seconds as m:ss.s (a video position people read)."""
    m, sec = divmod(float(s), 60.0)
    return f"{int(m)}:{sec:04.1f}"


def _filters(kind, path_prefix, tags, taken_after, taken_before, camera, near, media=None) -> dict:
    """The API's ``filters`` object from the CLI's options (validated as the API validates it)."""
    from pydantic import ValidationError

    from segsearch.errors import ConfigError

    from segsearch.api.schemas import Filters

    d: dict = {"kind": kind, "media": media, "path_prefix": str(Path(path_prefix).resolve()) if path_prefix else None}
    d.update(tags=list(tags) or None, taken_after=taken_after, taken_before=taken_before, camera=camera)
    if near:
        try:
            lat, lon, km = (float(v) for v in near.split(","))
        except ValueError:
            raise ConfigError(f"--near {near!r}: write LAT,LON,KM, e.g. 48.85,2.35,10") from None
        d["near"] = {"lat": lat, "lon": lon, "km": km}
    d = {k: v for k, v in d.items() if v is not None}
    try:
        return Filters(**d).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise ConfigError(f"invalid filter: {msgs}") from None


def _scene(query, scene, also, relations, top_k, data, clip, database_url, vector_backend, qdrant_url, json_out):
    from segsearch.errors import ConfigError
    from segsearch.library import make_settings

    from segsearch.cli.concept import print_scene, run_scene, scene_body

    try:
        if scene is None and not query:
            raise ConfigError("a scene query needs a text QUERY (object 0) with --and, or --scene FILE")
        settings = make_settings(
            data=data, clip=clip, database_url=database_url, vector_backend=vector_backend, qdrant_url=qdrant_url
        )
        hits = run_scene(settings, scene_body(query, scene, also, relations, top_k))
    except SegsearchError as exc:
        fail(exc)
    if json_out:
        typer.echo(json.dumps(hits))
    else:
        print_scene(hits)


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
