"""``segsearch concept add|list|search|remove`` and the scene-query half of ``segsearch search``
(``--scene FILE``, ``--and``, ``--relation``): run here, or asked of a running server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from segsearch.errors import ConfigError, SegsearchError

from segsearch.cli.options import Backend, Data, DbUrl, Json, QdrantUrl, fail, server_for

app = typer.Typer(
    help="Concepts: classifiers learnt from labelled segments, which tag the library.", no_args_is_help=True
)


def _settings(**kw):
    from segsearch.library import make_settings

    return make_settings(**kw)


def scene_body(query: str | None, scene: Path | None, also: list[str], relations: list[str], top_k: int) -> dict:
    """The ``POST /v1/search/scene`` body from a JSON file or from ``QUERY --and ... --relation ...``."""
    if scene is not None:
        try:
            body = json.loads(Path(scene).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read scene query {scene}: {exc}") from exc
        if not isinstance(body, dict):
            raise ConfigError(f"{scene}: a scene query is a JSON object with 'objects' and 'relations'")
        body.setdefault("top_k", top_k)
        return body
    from segsearch.relations import parse_relation

    rels = [parse_relation(r) for r in relations]
    return {
        "objects": [{"text": t} for t in [query, *also] if t],
        "relations": [{"subject": r.subject, "predicate": r.predicate, "object": r.object} for r in rels],
        "top_k": top_k,
    }


def run_scene(settings, body: dict) -> list[dict]:
    """Validate the body as the API does, run it (here or on the server) -> the API's hits."""
    from pydantic import ValidationError

    from segsearch.api.schemas import SceneRequest, SceneResponse

    try:
        req = SceneRequest.model_validate(body)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ConfigError(f"invalid scene query: {msgs}") from None
    server = server_for(settings)
    if server is not None:
        return server.call("POST", "/v1/search/scene", json=req.model_dump(mode="json", exclude_none=True))["hits"]
    from segsearch.library import Library

    with Library(settings=settings) as library:
        page = library.scene_search(
            [o.model_dump(exclude_none=True) for o in req.objects],
            [r.model_dump() for r in req.relations],
            filters=req.filters.to_filter(),
            top_k=req.top_k,
            offset=req.offset,
        )
    return SceneResponse.of(page).model_dump()["hits"]


def print_scene(hits: list[dict]) -> None:
    if not hits:
        typer.echo("no images hold all the objects as asked")
    for h in hits:
        typer.echo(f"{h['score']:.3f}  {h['image_path']}")
        for i, o in enumerate(h["objects"]):
            x, y, w, hh = o["bbox"]
            typer.echo(f"      [{i}] z={o['z']:.2f}  box=({x},{y},{w},{hh})  {o['segment_id']}")


def _run(settings, method: str, path: str, local, **kw):
    server = server_for(settings)
    if server is not None:
        return server.call(method, path, **kw)
    from segsearch.library import Library

    with Library(settings=settings) as library:
        return local(library.concepts(), library)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Concept name (becomes a tag): lower case, digits, '_', '-', '.'.")],
    text: Annotated[Optional[str], typer.Option(help="What it is, in words (its starting point).")] = None,
    pos: Annotated[list[str], typer.Option("--pos", help="A segment id that is it (repeat).")] = [],  # noqa: B006
    neg: Annotated[list[str], typer.Option("--neg", help="A segment id that is not (repeat).")] = [],  # noqa: B006
    replace: Annotated[bool, typer.Option(help="Start over instead of adding to its labels.")] = False,
    data: Data = None,
    database_url: DbUrl = None,
    vector_backend: Backend = None,
    qdrant_url: QdrantUrl = None,
    json_out: Json = False,
):
    """Create a concept or add labelled segments to it; it tags matching segments, now and in every later index."""
    try:
        s = _settings(data=data, database_url=database_url, vector_backend=vector_backend, qdrant_url=qdrant_url)
        body = {"name": name, "text": text, "positives": list(pos), "negatives": list(neg), "replace": replace}
        d = _run(
            s,
            "POST",
            "/v1/concepts",
            lambda c, _: c.learn(name, text=text, positives=pos, negatives=neg, replace=replace).summary(),
            json=body,
        )
    except SegsearchError as exc:
        fail(exc)
    if json_out:
        typer.echo(json.dumps(d))
    else:
        typer.echo(
            f"concept {d['name']} v{d['version']}: {d['positives']} positive, {d['negatives']} negative labels; "
            f"tags {d['tagged']} segments"
        )


@app.command("list")
def list_(data: Data = None, database_url: DbUrl = None, json_out: Json = False):
    """The library's concepts."""
    try:
        s = _settings(data=data, database_url=database_url)
        rows = _run(s, "GET", "/v1/concepts", lambda c, _: [x.summary() for x in c.list()])
    except SegsearchError as exc:
        fail(exc)
    if json_out:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no concepts yet (segsearch concept add NAME --text ... --pos SEGMENT_ID)")
    for d in rows:
        labels = f"+{d['positives']} -{d['negatives']}"
        typer.echo(f"{d['name']:24s} v{d['version']}  {labels}  tags {d['tagged']}  {d['text'] or ''}")


@app.command("search")
def search(
    name: str,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=200)] = 10,
    data: Data = None,
    database_url: DbUrl = None,
    json_out: Json = False,
):
    """Segments ranked by the concept (score = its probability)."""
    try:
        s = _settings(data=data, database_url=database_url)
        hits = _run(
            s,
            "POST",
            f"/v1/concepts/{name}/search",
            lambda c, lib: [h.to_dict() for h in c.search(name, lib.searcher(), top_k=top_k)],
            json={"top_k": top_k},
        )
        hits = hits["hits"] if isinstance(hits, dict) else hits
    except SegsearchError as exc:
        fail(exc)
    if json_out:
        typer.echo(json.dumps(hits))
        return
    for h in hits:
        x, y, w, hh = h["bbox"]
        typer.echo(f"{h['score']:.3f}  {h['image_path']}  box=({x},{y},{w},{hh})  {h['segment_id']}")


@app.command("remove")
def remove(name: str, data: Data = None, database_url: DbUrl = None):
    """Delete a concept and its tags."""
    try:
        s = _settings(data=data, database_url=database_url)
        _run(s, "DELETE", f"/v1/concepts/{name}", lambda c, _: c.remove(name))
    except SegsearchError as exc:
        fail(exc)
    typer.echo(f"removed concept {name}")
