"""``segsearch`` command line (typer). Heavy imports happen inside commands only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from segsearch.errors import SegsearchError

app = typer.Typer(help="Search inside photo libraries at the level of individual objects.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="List and download model checkpoints.", no_args_is_help=True)
app.add_typer(models_app, name="models")

# --- shared options -------------------------------------------------------------------------------
Data = Annotated[Optional[Path], typer.Option("--data", help="Data directory [env SEGSEARCH_DATA].")]
Sam = Annotated[Optional[str], typer.Option("--sam", help="SAM model name or checkpoint path.")]
Clip = Annotated[Optional[str], typer.Option("--clip", help="CLIP model name or checkpoint path.")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
DbUrl = Annotated[Optional[str], typer.Option("--database-url", help="SQLAlchemy URL (default: SQLite in --data).")]
Backend = Annotated[Optional[str], typer.Option("--vector-backend", help="embedded | server")]
QdrantUrl = Annotated[Optional[str], typer.Option("--qdrant-url", help="Qdrant URL for --vector-backend server.")]
Offline = Annotated[Optional[bool], typer.Option("--offline/--online", help="Never download weights.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def make_settings(**overrides):
    """Settings from env + defaults, overridden by the flags the user actually gave."""
    from pydantic import ValidationError

    from segsearch.errors import ConfigError
    from segsearch.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


def _fail(exc: SegsearchError) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(exc.exit_code)


def open_stores(settings):
    from segsearch.store.sql import Catalog
    from segsearch.store.vectors import open_vector_index

    vectors = open_vector_index(settings)  # first: the embedded store's lock stops a second process early
    try:
        return Catalog.open(settings.sql_url), vectors
    except BaseException:
        vectors.close()
        raise


# --- index ------------------------------------------------------------------------------------------
@app.command()
def index(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or globs.")],
    data: Data = None, sam: Sam = None, clip: Clip = None, device: Device = None,
    database_url: DbUrl = None, vector_backend: Backend = None, qdrant_url: QdrantUrl = None,
    offline: Offline = None,
    force: Annotated[bool, typer.Option("--force", help="Re-index images even if already indexed.")] = False,
    amg: Annotated[Optional[str], typer.Option(help="Mask engine: fast | reference (same masks).")] = None,
    points_per_side: Annotated[Optional[int], typer.Option(help="AMG grid points per side.")] = None,
    points_per_batch: Annotated[Optional[int], typer.Option(help="AMG prompts per decoder batch.")] = None,
    pred_iou_thresh: Annotated[Optional[float], typer.Option(help="AMG predicted-IoU filter.")] = None,
    stability_score_thresh: Annotated[Optional[float], typer.Option(help="AMG stability filter.")] = None,
    box_nms_thresh: Annotated[Optional[float], typer.Option(help="AMG box NMS IoU.")] = None,
    crop_n_layers: Annotated[Optional[int], typer.Option(help="AMG crop layers.")] = None,
    min_mask_region_area: Annotated[Optional[int], typer.Option(help="AMG small-region cleanup (px).")] = None,
    crop_mode: Annotated[Optional[str], typer.Option(help="masked | box | blur")] = None,
    min_segment_area: Annotated[Optional[int], typer.Option(help="Skip masks below this area (px).")] = None,
    engine: Annotated[Optional[str], typer.Option(
        help="local (this process) | ray (Ray Data actor pools: SAM and CLIP on every GPU of a cluster).")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        help="Ray cluster to join with --engine ray (default: start a local Ray instance).")] = None,
    json_out: Json = False,
):
    """Segment every image with SAM, embed each segment with CLIP, store vectors and records."""
    try:
        settings = make_settings(
            data=data, sam=sam, clip=clip, device=device, database_url=database_url,
            vector_backend=vector_backend, qdrant_url=qdrant_url, offline=offline,
            amg=amg, points_per_side=points_per_side, points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, min_mask_region_area=min_mask_region_area, crop_mode=crop_mode,
            min_segment_area=min_segment_area, engine=engine, ray_address=ray_address)
        summary = run_index(settings, paths, force=force, show_progress=not json_out and sys.stderr.isatty())
    except SegsearchError as exc:
        _fail(exc)
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    d = summary.to_dict()
    if json_out:
        typer.echo(json.dumps(d))
    else:
        print_summary(d)


def run_index(settings, paths, *, force=False, show_progress=False, models=None):
    from segsearch.indexer.discover import discover
    from segsearch.indexer.pipeline import Indexer, Models

    files = list(discover(paths))
    catalog, vectors = open_stores(settings)
    try:
        models = models or Models(settings)
        indexer = Indexer(settings, catalog, vectors, models)
        if not show_progress:
            return indexer.run_paths(files, force=force)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        counts = {"segments": 0}
        with Progress(TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]} img/s"), TextColumn("{task.fields[segments]} segments"),
                      TimeRemainingColumn()) as bar:
            task = bar.add_task("index", total=len(files), rate="-", segments=0)

            def on_image(outcome, _path):
                counts["segments"] += outcome.segments
                t = bar.tasks[0]
                rate = f"{t.completed / t.elapsed:.2f}" if t.elapsed else "-"
                bar.update(task, advance=1, rate=rate, segments=counts["segments"])

            return indexer.run_paths(files, force=force, progress=on_image)
    finally:
        vectors.close()
        catalog.close()


def print_summary(d: dict) -> None:
    from rich.console import Console

    c = Console(stderr=False)
    c.print(f"[bold]indexed[/] {d['indexed']}  [bold]skipped[/] {d['skipped']}  "
            f"[bold]failed[/] {d['failed']}  [bold]segments[/] {d['segments']}  "
            f"in {d['seconds']:.1f}s")
    for f in d["failures"]:
        c.print(f"  [red]failed[/] {f['path']}: {f['error']}", highlight=False)


# --- search -----------------------------------------------------------------------------------------
@app.command()
def doctor(
    data: Data = None, sam: Sam = None, clip: Clip = None, device: Device = None, database_url: DbUrl = None,
    vector_backend: Backend = None, qdrant_url: QdrantUrl = None, offline: Offline = None,
    repair: Annotated[bool, typer.Option("--repair", help="Fix the drift found (re-indexes affected images).")] = False,
    json_out: Json = False,
):
    """Find drift between SQL records and vectors (orphans, missing vectors, stuck or stale images,
    vanished files); --repair fixes it. Exit 0 when no drift remains, 1 when drift is left."""
    from segsearch.indexer.doctor import check, repair as do_repair
    from segsearch.indexer.pipeline import Indexer, Models

    try:
        settings = make_settings(data=data, sam=sam, clip=clip, device=device, database_url=database_url,
                                 vector_backend=vector_backend, qdrant_url=qdrant_url, offline=offline)
        catalog, vectors = open_stores(settings)
        try:
            models = Models(settings)
            found = check(catalog, vectors, models.fingerprint)
            out = {"found": found.to_dict()}
            if repair and found.total:
                out["repair"] = do_repair(found, Indexer(settings, catalog, vectors, models))
                out["after"] = check(catalog, vectors, models.fingerprint).to_dict()
            remaining = out.get("after", out["found"])["total"]
        finally:
            vectors.close()
            catalog.close()
    except SegsearchError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(out))
    else:
        typer.echo("drift found: " + ", ".join(f"{k} {v}" for k, v in out["found"]["counts"].items()))
        if "repair" in out:
            typer.echo("repaired: " + ", ".join(f"{k} {v}" for k, v in out["repair"].items()))
            typer.echo("drift left: " + ", ".join(f"{k} {v}" for k, v in out["after"]["counts"].items()))
    raise typer.Exit(0 if remaining == 0 else 1)


@app.command()
def search(
    query: Annotated[Optional[str], typer.Argument(help="Text query, e.g. 'red car'.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Query by example image instead.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=1000)] = 10,
    kind: Annotated[Optional[str], typer.Option(help="object | image")] = None,
    path_prefix: Annotated[Optional[str], typer.Option(help="Only images under this folder.")] = None,
    data: Data = None, clip: Clip = None, device: Device = None, database_url: DbUrl = None,
    vector_backend: Backend = None, qdrant_url: QdrantUrl = None, offline: Offline = None,
    json_out: Json = False,
):
    """Search the indexed segments by text or by example image, without a server."""
    if (query is None) == (image is None):
        typer.secho("error: give a text QUERY or --image FILE (one of them)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        settings = make_settings(data=data, clip=clip, device=device, database_url=database_url,
                                 vector_backend=vector_backend, qdrant_url=qdrant_url, offline=offline)
        hits = run_search(settings, query, image, top_k=top_k, kind=kind, path_prefix=path_prefix)
    except SegsearchError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps([h.to_dict() for h in hits]))
        return
    if not hits:
        typer.echo("no hits")
    for h in hits:
        x, y, w, h_ = h.bbox
        typer.echo(f"{h.score:.3f}  {h.kind:6s}  {h.image_path}  box=({x},{y},{w},{h_})  {h.segment_id}")


def run_search(settings, query, image, *, top_k=10, kind=None, path_prefix=None):
    from segsearch.errors import ConfigError, ImageError
    from segsearch.identity import collection_name
    from segsearch.images import decode_image
    from segsearch.models import get_clip_spec
    from segsearch.models.clip import ClipEmbedder
    from segsearch.search import Searcher
    from segsearch.store.vectors import SearchFilter

    if kind not in (None, "object", "image"):
        raise ConfigError("--kind must be 'object' or 'image'")
    spec = get_clip_spec(settings.clip, settings.clip_arch)
    catalog, vectors = open_stores(settings)
    try:
        embedder = ClipEmbedder.from_spec(spec, settings.checkpoints, device=settings.resolved_device(),
                                          offline=settings.offline)
        searcher = Searcher(catalog, vectors, embedder, collection_name(spec.fingerprint))
        if image is not None:
            try:
                decoded = decode_image(Path(image).read_bytes(), max_pixels=settings.max_image_pixels)
            except (OSError, ImageError) as exc:
                raise ConfigError(f"cannot use --image {image}: {exc}") from exc
            vec = searcher.image_vector(decoded.pil())
        else:
            vec = searcher.text_vector(query)
        flt = SearchFilter(kind=kind, path_prefix=str(Path(path_prefix).resolve()) if path_prefix else None)
        return searcher.search_vector(vec, top_k=top_k, flt=flt)
    finally:
        vectors.close()
        catalog.close()


# --- serve ------------------------------------------------------------------------------------------
@app.command()
def serve(
    data: Data = None, clip: Clip = None, sam: Sam = None, device: Device = None, database_url: DbUrl = None,
    vector_backend: Backend = None, qdrant_url: QdrantUrl = None, offline: Offline = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address [env SEGSEARCH_HOST].")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port [env SEGSEARCH_PORT].")] = None,
):
    """Run the query service (HTTP API + web page) over the same data directory."""
    try:
        settings = make_settings(data=data, clip=clip, sam=sam, device=device, database_url=database_url,
                                 vector_backend=vector_backend, qdrant_url=qdrant_url, offline=offline,
                                 host=host, port=port)
        import uvicorn

        from segsearch.api.app import create_app

        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    except SegsearchError as exc:
        _fail(exc)


# --- demo -------------------------------------------------------------------------------------------
@app.command()
def demo(
    data: Annotated[Path, typer.Option("--data", help="Demo data directory.")] = Path("segsearch-demo"),
    scenes: Annotated[int, typer.Option("--scenes", min=1, max=2000, help="Generated scenes to index.")] = 16,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=50)] = 3,
    device: Device = None,
    json_out: Json = False,
):
    """Offline demo: generate shapes-world scenes, index them with the bundled small models
    (sam-shapes-tiny + clip-shapes-tiny), run example queries and print the hits."""
    from segsearch.shapes import DEMO_SEEDS, SHAPES_AMG

    try:
        settings = make_settings(data=data, device=device, sam="sam-shapes-tiny", clip="clip-shapes-tiny",
                                 **SHAPES_AMG)
        folder = data / "scenes"
        folder.mkdir(parents=True, exist_ok=True)
        truth = _write_demo_scenes(folder, DEMO_SEEDS[:scenes])
        summary = run_index(settings, [str(folder)], show_progress=not json_out and sys.stderr.isatty())
        from collections import Counter

        # query the objects that are really there (most frequent first), plus one colour-only query
        common = [c for c, _ in Counter(c for caps in truth.values() for c in caps).most_common(5)]
        results = []
        for q in [*common, f"a {common[0].split()[0]} shape"]:
            hits = run_search(settings, q, None, top_k=top_k, kind="object")
            results.append({"query": q, "hits": [h.to_dict() for h in hits]})
    except SegsearchError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps({"index": summary.to_dict(), "queries": results, "scenes": str(folder)}))
        return
    print_summary(summary.to_dict())
    for r in results:
        typer.secho(f'\n"{r["query"]}"', bold=True)
        for h in r["hits"]:
            x, y, w, hh = h["bbox"]
            shown = ", ".join(truth.get(Path(h["image_path"]).name, []))
            typer.echo(f"  {h['score']:.3f}  {Path(h['image_path']).name}  box=({x},{y},{w},{hh})  scene has: {shown}")
    typer.echo(f"\nscenes in {folder}; try: segsearch search \"white star\" --data {data} "
               "--clip clip-shapes-tiny")


def _write_demo_scenes(folder: Path, seeds) -> dict[str, list[str]]:
    from PIL import Image

    from segsearch.shapes import make_scene

    truth = {}
    for seed in seeds:
        name = f"scene-{seed}.png"
        sc = make_scene(seed)
        if not (folder / name).exists():
            Image.fromarray(sc.image).save(folder / name)
        truth[name] = sc.captions
    return truth


# --- models -----------------------------------------------------------------------------------------
@models_app.command("list")
def models_list(json_out: Json = False):
    """Registered models, where their weights come from, and whether they are here already."""
    from segsearch.models.registry import Weights, list_specs
    from segsearch.models.weights import local_path

    settings = make_settings()
    rows = list_specs()
    for r in rows:
        r["present"] = bool(r["file"]) and local_path(Weights(r["file"], r["sha256"], r["url"]),
                                                      settings.checkpoints).exists()
    if json_out:
        typer.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("name", "kind", "present", "file", "description")
    for r in rows:
        t.add_row(r["name"], r["kind"], "yes" if r["present"] else "no", r["file"] or "-", r["description"])
    Console().print(t)


@models_app.command("download")
def models_download(name: Annotated[str, typer.Argument(help="Registered model name.")]):
    """Download (or verify) a registered model's checkpoint."""
    from segsearch.models.registry import get_spec
    from segsearch.models.weights import ensure_weights

    try:
        settings = make_settings()
        spec = get_spec(name)
        if spec.weights is None:
            typer.echo(f"{name} has no weights to download (random init)")
            return
        path = ensure_weights(spec.weights, settings.checkpoints, offline=settings.offline,
                              progress=sys.stderr.isatty())
    except SegsearchError as exc:
        _fail(exc)
    typer.echo(f"{name}: {path} (SHA-256 verified)")


def main() -> None:  # pragma: no cover
    app()
