"""``segsearch`` command line (typer). Heavy imports happen inside commands only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from segsearch.errors import SegsearchError

app = typer.Typer(help="Search inside photo libraries at the level of individual objects.",
                  no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="List and download model checkpoints.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        from segsearch import __version__

        typer.echo(f"segsearch {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
    log_format: Annotated[str, typer.Option(
        help="auto (rich on a terminal, JSON lines otherwise, e.g. in containers) | rich | json | text.",
        case_sensitive=False)] = "auto",
):
    """Search inside photo libraries at the level of individual objects."""
    from segsearch.logs import configure
    from segsearch.settings import unknown_env_vars

    configure(verbose=verbose, quiet=quiet, fmt=log_format)
    import logging

    for var in unknown_env_vars():
        logging.getLogger("segsearch").warning("ignoring unknown environment variable %s", var)


# --- shared options -------------------------------------------------------------------------------
# Model and data options default to None so that "not given" can be told from "given": a library
# remembers its models (segsearch.library), and only what the user gives overrides the record.
Data = Annotated[Optional[Path], typer.Option(
    "--data", help="Data directory (env SEGSEARCH_DATA; default: ./segsearch-data).")]
Sam = Annotated[Optional[str], typer.Option(
    "--sam", help="SAM model name or checkpoint path (default: the library's recorded model; sam-vit-b for a new "
                  "library).")]
Clip = Annotated[Optional[str], typer.Option(
    "--clip", help="CLIP model name or checkpoint path (default: the library's recorded model; clip-vit-b-32 for a "
                   "new library).")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N (default: auto).")]
DbUrl = Annotated[Optional[str], typer.Option("--database-url", help="SQLAlchemy URL (default: SQLite in --data).")]
Backend = Annotated[Optional[str], typer.Option("--vector-backend", help="embedded | server (default: embedded).")]
QdrantUrl = Annotated[Optional[str], typer.Option("--qdrant-url", help="Qdrant URL for --vector-backend server.")]
Offline = Annotated[Optional[bool], typer.Option("--offline/--online",
                                                 help="Never download weights (default: online).")]
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
    reindex: Annotated[bool, typer.Option(
        "--reindex", help="Switch this library to the models/settings given (the record is replaced; the images "
                          "given are re-indexed). Without it, models other than the recorded ones stop with exit 2."
    )] = False,
    amg: Annotated[Optional[str], typer.Option(help="Mask engine: fast | reference (same masks) (default: fast).")] = None,
    points_per_side: Annotated[Optional[int], typer.Option(help="AMG grid points per side (default: 32).")] = None,
    points_per_batch: Annotated[Optional[int], typer.Option(help="AMG prompts per decoder batch (default: 64).")] = None,
    pred_iou_thresh: Annotated[Optional[float], typer.Option(help="AMG predicted-IoU filter (default: 0.88).")] = None,
    stability_score_thresh: Annotated[Optional[float], typer.Option(help="AMG stability filter (default: 0.95).")] = None,
    box_nms_thresh: Annotated[Optional[float], typer.Option(help="AMG box NMS IoU (default: 0.7).")] = None,
    crop_n_layers: Annotated[Optional[int], typer.Option(help="AMG crop layers (default: 0).")] = None,
    min_mask_region_area: Annotated[Optional[int], typer.Option(
        help="AMG small-region cleanup (px) (default: 0).")] = None,
    crop_mode: Annotated[Optional[str], typer.Option(help="masked | box | blur (default: masked)")] = None,
    min_segment_area: Annotated[Optional[int], typer.Option(help="Skip masks below this area (px) (default: 64).")] = None,
    engine: Annotated[Optional[str], typer.Option(
        help="local (this process) | ray (Ray Data actor pools: SAM and CLIP on every GPU of a cluster) "
             "(default: local).")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        help="Ray cluster to join with --engine ray (default: start a local Ray instance).")] = None,
    json_out: Json = False,
):
    """Segment every image with SAM, embed each segment with CLIP, store vectors and records.

    Model and AMG/crop flags are needed only the first time: the library remembers them. While
    `segsearch serve` runs on the same data directory, the work is handed to it."""
    show = not json_out and sys.stderr.isatty()
    try:
        settings = make_settings(
            data=data, sam=sam, clip=clip, device=device, database_url=database_url,
            vector_backend=vector_backend, qdrant_url=qdrant_url, offline=offline,
            amg=amg, points_per_side=points_per_side, points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, min_mask_region_area=min_mask_region_area, crop_mode=crop_mode,
            min_segment_area=min_segment_area, engine=engine, ray_address=ray_address)
        server = _server(settings)
        if server is not None:
            d = _index_on_server(server, settings, paths, force=force, reindex=reindex, show_progress=show)
        else:
            d = run_index(settings, paths, force=force, reindex=reindex, show_progress=show).to_dict()
    except SegsearchError as exc:
        _fail(exc)
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    if json_out:
        typer.echo(json.dumps(d))
    else:
        print_summary(d)


def _server(settings):
    from segsearch.client import ServerClient

    return ServerClient.find(settings)


def _index_on_server(server, settings, paths, *, force, reindex, show_progress) -> dict:
    """Hand an index run to the server that holds the data directory; same output as a local run."""
    from segsearch.indexer.discover import missing_inputs

    missing = missing_inputs(paths)  # the user's mistakes are found here, with a local run's message
    if missing:
        raise FileNotFoundError(f"no such file, folder or glob match: {missing[0]}")
    if not show_progress:
        return server.index(settings, paths, force=force, reindex=reindex)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]indexing (server)"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[segments]} segments"), TimeRemainingColumn()) as bar:
        task = bar.add_task("index", total=None, segments=0)

        def on_progress(j):
            p = j["progress"]
            bar.update(task, completed=p.get("files_done", 0), total=p.get("files_total"),
                       segments=p.get("segments", 0))

        return server.index(settings, paths, force=force, reindex=reindex, on_progress=on_progress)


def run_index(settings, paths, *, force=False, reindex=False, show_progress=False, models=None):
    from segsearch.indexer.run import index_paths

    catalog, vectors = open_stores(settings)
    try:
        if not show_progress:
            return index_paths(settings, catalog, vectors, paths, force=force, reindex=reindex, models=models)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        counts = {"segments": 0}
        with Progress(TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]} img/s"), TextColumn("{task.fields[segments]} segments"),
                      TimeRemainingColumn()) as bar:
            task = bar.add_task("index", total=None, rate="-", segments=0)

            def on_image(outcome, _path):
                counts["segments"] += outcome.segments
                t = bar.tasks[0]
                rate = f"{t.completed / t.elapsed:.2f}" if t.elapsed else "-"
                bar.update(task, advance=1, rate=rate, segments=counts["segments"])

            return index_paths(settings, catalog, vectors, paths, force=force, reindex=reindex, models=models,
                               on_start=lambda n: bar.update(task, total=n), progress=on_image)
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


# --- doctor -----------------------------------------------------------------------------------------
@app.command()
def doctor(
    data: Data = None, sam: Sam = None, clip: Clip = None, device: Device = None, database_url: DbUrl = None,
    vector_backend: Backend = None, qdrant_url: QdrantUrl = None, offline: Offline = None,
    repair: Annotated[bool, typer.Option("--repair", help="Fix the drift found (re-indexes affected images).")] = False,
    json_out: Json = False,
):
    """Find drift between SQL records and vectors (orphans, missing vectors, stuck or stale images,
    vanished files); --repair fixes it. Exit 0 when no drift remains, 1 when drift is left."""
    try:
        settings = make_settings(data=data, sam=sam, clip=clip, device=device, database_url=database_url,
                                 vector_backend=vector_backend, qdrant_url=qdrant_url, offline=offline)
        server = _server(settings)
        if server is not None:
            server.check_models(settings)
            if repair:
                job = server.wait(server.submit_repair()["job_id"])
                if job["status"] != "completed":
                    raise SegsearchError(f"the server's repair job {job['status']}: {job.get('error') or ''}")
                out = job["summary"]
            else:
                out = server.doctor()
        else:
            out = run_doctor(settings, repair=repair)
        remaining = out.get("after", out["found"])["total"]
    except SegsearchError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(out))
    else:
        def counts(d):
            return ", ".join(f"{k} {v}" for k, v in d["counts"].items() if v) or "none"

        typer.echo("no drift found" if not out["found"]["total"] else "drift found: " + counts(out["found"]))
        if "repair" in out:
            typer.echo("repaired: " + ", ".join(f"{k} {v}" for k, v in out["repair"].items()))
            typer.echo("drift left: " + counts(out["after"]))
    raise typer.Exit(0 if remaining == 0 else 1)


def run_doctor(settings, *, repair: bool = False) -> dict:
    from segsearch import library
    from segsearch.indexer.doctor import check, repair as do_repair
    from segsearch.indexer.pipeline import Indexer, Models

    catalog, vectors = open_stores(settings)
    try:
        settings = library.resolve(settings, catalog, "doctor")
        models = Models(settings)
        found = check(catalog, vectors, models.fingerprint)
        out = {"found": found.to_dict()}
        if repair and found.total:
            out["repair"] = do_repair(found, Indexer(settings, catalog, vectors, models))
            out["after"] = check(catalog, vectors, models.fingerprint).to_dict()
        return out
    finally:
        vectors.close()
        catalog.close()


# --- search -----------------------------------------------------------------------------------------
@app.command()
def search(
    query: Annotated[Optional[str], typer.Argument(help="Text query, e.g. 'red car'.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Query by example image instead.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=1000)] = 10,
    kind: Annotated[Optional[str], typer.Option(help="object | image (default: both)")] = None,
    path_prefix: Annotated[Optional[str], typer.Option(help="Only images under this folder.")] = None,
    data: Data = None, clip: Clip = None, device: Device = None, database_url: DbUrl = None,
    vector_backend: Backend = None, qdrant_url: QdrantUrl = None, offline: Offline = None,
    json_out: Json = False,
):
    """Search the indexed segments by text or by example image (with the library's CLIP model)."""
    if (query is None) == (image is None):
        typer.secho("error: give a text QUERY or --image FILE (one of them)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        settings = make_settings(data=data, clip=clip, device=device, database_url=database_url,
                                 vector_backend=vector_backend, qdrant_url=qdrant_url, offline=offline)
        server = _server(settings)
        if server is not None:
            hits = server.search_hits(settings, query, image, top_k=top_k, kind=kind, path_prefix=path_prefix)
        else:
            hits = [h.to_dict() for h in run_search(settings, query, image, top_k=top_k, kind=kind,
                                                    path_prefix=path_prefix)]
    except SegsearchError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(hits))
        return
    if not hits:
        typer.echo("no hits")
    for h in hits:
        x, y, w, h_ = h["bbox"]
        typer.echo(f"{h['score']:.3f}  {h['kind']:6s}  {h['image_path']}  box=({x},{y},{w},{h_})  {h['segment_id']}")


def run_search(settings, query, image, *, top_k=10, kind=None, path_prefix=None):
    from segsearch import library
    from segsearch.errors import ConfigError, ImageError
    from segsearch.identity import collection_name
    from segsearch.images import decode_image
    from segsearch.models import get_clip_spec
    from segsearch.models.clip import ClipEmbedder
    from segsearch.search import Searcher
    from segsearch.store.vectors import SearchFilter

    if kind not in (None, "object", "image"):
        raise ConfigError("--kind must be 'object' or 'image'")
    catalog, vectors = open_stores(settings)
    try:
        settings = library.resolve(settings, catalog, "search", collections=vectors.collections())
        spec = get_clip_spec(settings.clip, settings.clip_arch)
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


# --- info -------------------------------------------------------------------------------------------
@app.command()
def info(data: Data = None, database_url: DbUrl = None, vector_backend: Backend = None,
         qdrant_url: QdrantUrl = None, json_out: Json = False):
    """The library: recorded models and settings, counts, last run, size on disk."""
    try:
        settings = make_settings(data=data, database_url=database_url, vector_backend=vector_backend,
                                 qdrant_url=qdrant_url)
        server = _server(settings)
        if server is not None:
            d = server.info()
            d["server"] = server.url
        else:
            from segsearch import library

            catalog, vectors = open_stores(settings)
            try:
                d = library.info(settings, catalog, vectors)
            finally:
                vectors.close()
                catalog.close()
    except SegsearchError as exc:
        _fail(exc)
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
        typer.echo(f"last run  #{r['id']} {r['status']} {r['started_at']}: {r['indexed']} indexed, "
                   f"{r['skipped']} skipped, {r['failed']} failed")
    typer.echo(f"on disk   {d['size_bytes']['total'] / 1e6:.1f} MB")


# --- serve ------------------------------------------------------------------------------------------
@app.command()
def serve(
    data: Data = None, clip: Clip = None, sam: Sam = None, device: Device = None, database_url: DbUrl = None,
    vector_backend: Backend = None, qdrant_url: QdrantUrl = None, offline: Offline = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (env SEGSEARCH_HOST; default: 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (env SEGSEARCH_PORT; default: 8000).")] = None,
    watch: Annotated[Optional[list[Path]], typer.Option(
        "--watch", help="Keep this folder indexed while serving (new, changed and deleted files); repeatable.")] = None,
):
    """Run the query service (HTTP API + web page) over the data directory, with the library's models.
    While it runs, `segsearch index/search/doctor/info` on the same data directory go through it."""
    try:
        settings = make_settings(data=data, clip=clip, sam=sam, device=device, database_url=database_url,
                                 vector_backend=vector_backend, qdrant_url=qdrant_url, offline=offline,
                                 host=host, port=port)
        folders = [str(w) for w in watch or []]
        not_dirs = [f for f in folders if not Path(f).is_dir()]
        if not_dirs:
            from segsearch.errors import ConfigError

            raise ConfigError(f"--watch: not a folder: {', '.join(not_dirs)}")
        import uvicorn

        from segsearch.api.app import create_app

        typer.echo(f"segsearch serving {Path(settings.data).resolve()} on http://{settings.host}:{settings.port}",
                   err=True)
        # idle keep-alive connections close after 5 s; a request's headers may take at most 64 KiB
        uvicorn.run(create_app(settings, announce=True, watch=folders), host=settings.host, port=settings.port,
                    log_config=None, timeout_keep_alive=5, h11_max_incomplete_event_size=64 << 10,
                    timeout_graceful_shutdown=10)
    except SegsearchError as exc:
        _fail(exc)


# --- demo -------------------------------------------------------------------------------------------
@app.command()
def demo(
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="Demo data directory (default: segsearch/demo in the user's data folder, "
                       "$XDG_DATA_HOME or ~/.local/share).")] = None,
    scenes: Annotated[int, typer.Option("--scenes", min=1, max=2000, help="Generated scenes to index.")] = 16,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=50)] = 3,
    device: Device = None,
    json_out: Json = False,
):
    """Offline demo: generate shapes-world scenes, index them with the bundled small models
    (sam-shapes-tiny + clip-shapes-tiny), run example queries and print the hits.

    The bundled models know only coloured shapes; real photos need real weights
    (`segsearch index PHOTOS` downloads them)."""
    from segsearch.settings import user_data_dir
    from segsearch.shapes import DEMO_SEEDS, SHAPES_AMG

    data = data or user_data_dir() / "demo"
    try:
        settings = make_settings(data=data, device=device, sam="sam-shapes-tiny", clip="clip-shapes-tiny",
                                 **SHAPES_AMG)
        folder = Path(settings.data) / "scenes"
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
        typer.echo(json.dumps({"index": summary.to_dict(), "queries": results, "scenes": str(folder),
                               "data": str(settings.data)}))
        return
    print_summary(summary.to_dict())
    for r in results:
        typer.secho(f'\n"{r["query"]}"', bold=True)
        for h in r["hits"]:
            x, y, w, hh = h["bbox"]
            shown = ", ".join(truth.get(Path(h["image_path"]).name, []))
            typer.echo(f"  {h['score']:.3f}  {Path(h['image_path']).name}  box=({x},{y},{w},{hh})  scene has: {shown}")
    typer.echo(f"\nscenes in {folder}; the library remembers its models, so try:\n"
               f"  segsearch search \"white star\" --data {settings.data}\n"
               f"  segsearch serve --data {settings.data}\n"
               "The bundled models know only coloured shapes: for real photos, `segsearch index PHOTOS` with the "
               "default models (downloaded on first use).")


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
    """Registered models: licence, relative cost, where the weights come from, whether their hash is
    pinned, and whether they are here already."""
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
        t.add_row(r["name"], r["kind"], "yes" if r["present"] else "no", r["licence"] or "-", r["cost"] or "-",
                  str(r["dim"] or "-"), where, r["pin"],
                  r["description"] + (f" (needs {r['needs']})" if r["needs"] else ""))
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

