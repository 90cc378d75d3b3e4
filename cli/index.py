"""``segsearch index`` and ``segsearch doctor``: run here, or handed to a running server."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from segsearch.errors import SegsearchError

from segsearch.cli.options import Backend, Clip, Data, DbUrl, Device, Json, Offline, QdrantUrl, Sam, fail, server_for


def index(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or globs.")],
    data: Data = None,
    sam: Sam = None,
    clip: Clip = None,
    device: Device = None,
    database_url: DbUrl = None,
    vector_backend: Backend = None,
    qdrant_url: QdrantUrl = None,
    offline: Offline = None,
    force: Annotated[bool, typer.Option("--force", help="Re-index images even if already indexed.")] = False,
    reindex: Annotated[
        bool,
        typer.Option(
            "--reindex",
            help="Switch this library to the models/settings given (the record is replaced; the images "
            "given are re-indexed). Without it, models other than the recorded ones stop with exit 2.",
        ),
    ] = False,
    amg: Annotated[
        Optional[str], typer.Option(help="Mask engine: fast | reference (same masks) (default: fast).")
    ] = None,
    points_per_side: Annotated[
        Optional[int], typer.Option(help="AMG grid points per side (default: the model's; Meta's models 32).")
    ] = None,
    points_per_batch: Annotated[
        Optional[int], typer.Option(help="AMG prompts per decoder batch (default: 64).")
    ] = None,
    pred_iou_thresh: Annotated[
        Optional[float],
        typer.Option(help="AMG predicted-IoU filter (default: the model's; SAM 1 0.88, SAM 2 0.8)."),
    ] = None,
    stability_score_thresh: Annotated[
        Optional[float], typer.Option(help="AMG stability filter (default: the model's; Meta's models 0.95).")
    ] = None,
    box_nms_thresh: Annotated[Optional[float], typer.Option(help="AMG box NMS IoU (default: 0.7).")] = None,
    crop_n_layers: Annotated[Optional[int], typer.Option(help="AMG crop layers (default: 0).")] = None,
    min_mask_region_area: Annotated[
        Optional[int], typer.Option(help="AMG small-region cleanup (px) (default: the model's; Meta's models 0).")
    ] = None,
    crop_mode: Annotated[Optional[str], typer.Option(help="masked | box | blur (default: masked)")] = None,
    clip_precision: Annotated[
        Optional[str],
        typer.Option(
            help="fp32 | int8 | bf16: CLIP's image tower; on a CPU int8 ~1.5x faster, bf16 ~2.3x where the "
            "CPU has AVX512-BF16 or AMX (default: fp32)."
        ),
    ] = None,
    sam_precision: Annotated[
        Optional[str],
        typer.Option(
            help="fp32 | bf16: SAM's image encoder; bf16 ~1.5x faster where the CPU has AVX512-BF16 or AMX "
            "(default: fp32)."
        ),
    ] = None,
    min_segment_area: Annotated[
        Optional[int], typer.Option(help="Skip masks below this area (px) (default: 64).")
    ] = None,
    video_fps: Annotated[
        Optional[float], typer.Option(help="Frames per second sampled from videos (default: 2).")
    ] = None,
    min_track_seconds: Annotated[
        Optional[float], typer.Option(help="Drop video object tracks shorter than this (default: 1.0 s).")
    ] = None,
    video_tracking: Annotated[
        Optional[str],
        typer.Option(
            help="propagate (each track's mask prompts the next frame; new objects looked for where the picture "
            "changed) | link (automatic masks on every frame, linked; ~4x slower) (default: propagate)."
        ),
    ] = None,
    video_refresh_seconds: Annotated[
        Optional[float],
        typer.Option(help="With propagate: automatic masks on a whole frame at least this often (default: 20 s)."),
    ] = None,
    engine: Annotated[
        Optional[str],
        typer.Option(
            help="local (this process) | ray (Ray Data actor pools: SAM and CLIP on every GPU of a cluster) "
            "(default: local)."
        ),
    ] = None,
    ray_address: Annotated[
        Optional[str], typer.Option(help="Ray cluster to join with --engine ray (default: start a local Ray instance).")
    ] = None,
    json_out: Json = False,
):
    """Segment every image with SAM, embed each segment with CLIP, store vectors and records.

    Model and AMG/crop flags are needed only the first time: the library remembers them. While
    `segsearch serve` runs on the same data directory, the work is handed to it."""
    from segsearch.library import make_settings

    show = not json_out and sys.stderr.isatty()
    try:
        settings = make_settings(
            data=data,
            sam=sam,
            clip=clip,
            device=device,
            database_url=database_url,
            vector_backend=vector_backend,
            qdrant_url=qdrant_url,
            offline=offline,
            amg=amg,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers,
            min_mask_region_area=min_mask_region_area,
            crop_mode=crop_mode,
            clip_precision=clip_precision,
            sam_precision=sam_precision,
            min_segment_area=min_segment_area,
            video_fps=video_fps,
            min_track_seconds=min_track_seconds,
            video_tracking=video_tracking,
            video_refresh_seconds=video_refresh_seconds,
            engine=engine,
            ray_address=ray_address,
        )
        server = server_for(settings)
        if server is not None:
            d = _index_on_server(server, settings, paths, force=force, reindex=reindex, show_progress=show)
        else:
            if not json_out:
                _say_default_sam(settings)
            d = run_index(settings, paths, force=force, reindex=reindex, show_progress=show).to_dict()
    except SegsearchError as exc:
        fail(exc)
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    if json_out:
        typer.echo(json.dumps(d))
    else:
        print_summary(d)


def _index_on_server(server, settings, paths, *, force, reindex, show_progress) -> dict:
    """Hand an index run to the server that holds the data directory; same output as a local run."""
    from segsearch.library import Library

    missing = Library.missing_inputs(paths)  # the user's mistakes are found here, with a local run's message
    if missing:
        raise FileNotFoundError(f"no such file, folder or glob match: {missing[0]}")
    if not show_progress:
        return server.index(settings, paths, force=force, reindex=reindex)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]indexing (server)"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[segments]} segments"),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task("index", total=None, segments=0)

        def on_progress(j):
            p = j["progress"]
            bar.update(
                task, completed=p.get("files_done", 0), total=p.get("files_total"), segments=p.get("segments", 0)
            )

        return server.index(settings, paths, force=force, reindex=reindex, on_progress=on_progress)


def run_index(settings, paths, *, force=False, reindex=False, show_progress=False):
    """Index in this process (with a progress bar on a terminal); returns the run summary."""
    from segsearch.library import Library

    with Library(settings=settings) as library:
        if not show_progress:
            return library.index(paths, force=force, reindex=reindex)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        counts = {"segments": 0}
        with Progress(
            TextColumn("[bold]indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"),
            TextColumn("{task.fields[segments]} segments"),
            TimeRemainingColumn(),
        ) as bar:
            task = bar.add_task("index", total=None, rate="-", segments=0)

            def on_image(outcome, _path):
                counts["segments"] += outcome.segments
                t = bar.tasks[0]
                rate = f"{t.completed / t.elapsed:.2f}" if t.elapsed else "-"
                bar.update(task, advance=1, rate=rate, segments=counts["segments"])

            return library.index(
                paths, force=force, reindex=reindex, on_start=lambda n: bar.update(task, total=n), progress=on_image
            )


def print_summary(d: dict) -> None:
    from rich.console import Console

    c = Console(stderr=False)
    c.print(
        f"[bold]indexed[/] {d['indexed']}  [bold]skipped[/] {d['skipped']}  "
        f"[bold]failed[/] {d['failed']}  [bold]segments[/] {d['segments']}  "
        f"in {d['seconds']:.1f}s"
    )
    for f in d["failures"]:
        # soft wrap: the terminal folds a long line, and a copied path stays one piece
        c.print(f"  [red]failed[/] {f['path']}: {f['error']}", highlight=False, soft_wrap=True)


def doctor(
    data: Data = None,
    sam: Sam = None,
    clip: Clip = None,
    device: Device = None,
    database_url: DbUrl = None,
    vector_backend: Backend = None,
    qdrant_url: QdrantUrl = None,
    offline: Offline = None,
    repair: Annotated[bool, typer.Option("--repair", help="Fix the drift found (re-indexes affected images).")] = False,
    json_out: Json = False,
):
    """Find drift between SQL records and vectors (orphans, missing vectors, stuck or stale images,
    vanished files); --repair fixes it. Exit 0 when no drift remains, 1 when drift is left."""
    from segsearch.library import Library, make_settings

    try:
        settings = make_settings(
            data=data,
            sam=sam,
            clip=clip,
            device=device,
            database_url=database_url,
            vector_backend=vector_backend,
            qdrant_url=qdrant_url,
            offline=offline,
        )
        server = server_for(settings)
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
            with Library(settings=settings) as library:
                out = library.doctor(repair=repair)
        remaining = out.get("after", out["found"])["total"]
    except SegsearchError as exc:
        fail(exc)
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


def _say_default_sam(settings) -> None:
    """A new library on a machine without a GPU gets SAM ViT-B (pinned weights, SAM 1's masks) unless
    told otherwise; say so once, with the faster choices: a CPU-class SAM, and bf16 where the CPU
    multiplies it in hardware (figures in `segsearch models list` and the manual's "Models and
    machines")."""
    from segsearch.runtime import check_data_dir

    new = settings.vector_backend == "embedded" and not (settings.data / "segsearch.db").exists()
    if not new or "sam" in settings.model_fields_set:  # (a user who chose models gets no advice)
        return
    check_data_dir(settings.data)
    if settings.resolved_device() != "cpu":
        return
    from segsearch.models.sam import native_bf16

    lines = [
        f"A new library: SAM {settings.sam} (the default). On this CPU, `--sam efficientvit-sam-l0` "
        "encodes photos ~10x faster (pip install 'segsearch[efficientvit]'; `segsearch models list` compares)."
    ]
    if native_bf16() and not {"sam_precision", "clip_precision"} & settings.model_fields_set:
        lines.append(
            "This CPU multiplies bfloat16 in hardware: `--sam-precision bf16 --clip-precision bf16` index a "
            'photo 1.2-1.5x faster (opt-in; the manual\'s "Models and machines" has how close to fp32 it stays).'
        )
    for line in lines:
        typer.secho(line, err=True, dim=True)
