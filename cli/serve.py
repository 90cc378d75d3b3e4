"""``segsearch serve`` (the HTTP API and web page) and ``segsearch demo`` (offline, bundled models)."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from segsearch.errors import SegsearchError

from segsearch.cli.index import print_summary, run_index
from segsearch.cli.options import Backend, Clip, Data, DbUrl, Device, Json, Offline, QdrantUrl, Sam, fail


class DemoSam(str, Enum):
    """The bundled SAMs (both know only the shapes world)."""

    sam1 = "sam-shapes-tiny"
    sam2 = "sam2-shapes-tiny"


def serve(
    data: Data = None,
    clip: Clip = None,
    sam: Sam = None,
    device: Device = None,
    database_url: DbUrl = None,
    vector_backend: Backend = None,
    qdrant_url: QdrantUrl = None,
    offline: Offline = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (env SEGSEARCH_HOST; default: 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (env SEGSEARCH_PORT; default: 8000).")] = None,
    watch: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--watch", help="Keep this folder indexed while serving (new, changed and deleted files); repeatable."
        ),
    ] = None,
    root: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--root",
            help="A library root: index jobs posted over HTTP may name files and folders under it (and "
            "nowhere else); repeatable (env SEGSEARCH_ROOTS, a JSON list). --watch folders are roots too.",
        ),
    ] = None,
):
    """Run the query service (HTTP API + web page) over the data directory, with the library's models.
    While it runs, `segsearch index/search/doctor/info` on the same data directory go through it."""
    from segsearch.errors import ConfigError
    from segsearch.library import make_settings

    try:
        settings = make_settings(
            data=data,
            clip=clip,
            sam=sam,
            device=device,
            database_url=database_url,
            vector_backend=vector_backend,
            qdrant_url=qdrant_url,
            offline=offline,
            host=host,
            port=port,
            roots=[r.expanduser().resolve() for r in root] if root else None,
        )
        not_dirs = [str(r) for r in settings.roots if not Path(r).is_dir()]
        if not_dirs:
            raise ConfigError(f"--root: not a folder: {', '.join(not_dirs)}")
        folders = [str(w) for w in watch or []]
        not_dirs = [f for f in folders if not Path(f).is_dir()]
        if not_dirs:
            raise ConfigError(f"--watch: not a folder: {', '.join(not_dirs)}")
        from segsearch.runtime import check_data_dir

        check_data_dir(settings.data)  # (before announcing a server that could not start)
        import uvicorn

        from segsearch.api.app import create_app

        typer.echo(
            f"segsearch serving {Path(settings.data).resolve()} on http://{settings.host}:{settings.port}", err=True
        )
        # idle keep-alive connections close after 5 s; a request's headers may take at most 64 KiB
        uvicorn.run(
            create_app(settings, announce=True, watch=folders),
            host=settings.host,
            port=settings.port,
            log_config=None,
            timeout_keep_alive=5,
            h11_max_incomplete_event_size=64 << 10,
            timeout_graceful_shutdown=10,
        )
    except SegsearchError as exc:
        fail(exc)


def demo(
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            help="Demo data directory (default: segsearch/demo in the user's data folder, "
            "$XDG_DATA_HOME or ~/.local/share).",
        ),
    ] = None,
    scenes: Annotated[int, typer.Option("--scenes", min=1, max=2000, help="Generated scenes to index.")] = 16,
    videos: Annotated[int, typer.Option("--videos", min=0, max=50, help="Generated 8-second clips to index.")] = 2,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=50)] = 3,
    sam: Annotated[
        DemoSam,
        typer.Option("--sam", help="Bundled SAM: SAM 1 or SAM 2.1 architecture (the latter needs the sam2 extra)."),
    ] = "sam-shapes-tiny",
    device: Device = None,
    json_out: Json = False,
):
    """Offline demo: generate shapes-world scenes and short clips, index them with the bundled small
    models (sam-shapes-tiny or sam2-shapes-tiny, + clip-shapes-tiny), run example queries and print
    the hits (in the clips: object tracks, with when they are on screen).

    The bundled models know only coloured shapes; real photos need real weights
    (`segsearch index PHOTOS` downloads them)."""
    from collections import Counter

    from segsearch.eval.shapes import DEMO_SEEDS, SHAPES_AMG
    from segsearch.library import Library, make_settings
    from segsearch.settings import user_data_dir

    sam = DemoSam(sam).value
    data = data or user_data_dir() / ("demo" if sam == "sam-shapes-tiny" else "demo-sam2")  # a library keeps its SAM
    try:
        settings = make_settings(data=data, device=device, sam=sam, clip="clip-shapes-tiny", **SHAPES_AMG)
        folder = Path(settings.data) / "scenes"
        folder.mkdir(parents=True, exist_ok=True)
        truth = _write_demo_scenes(folder, DEMO_SEEDS[:scenes])
        clips = Path(settings.data) / "videos"
        clip_truth = _write_demo_videos(clips, videos)
        inputs = [str(folder)] + ([str(clips)] if videos else [])
        summary = run_index(settings, inputs, show_progress=not json_out and sys.stderr.isatty())
        # query the objects that are really there (most frequent first), plus one colour-only query
        common = [c for c, _ in Counter(c for caps in truth.values() for c in caps).most_common(5)]
        results = []
        with Library(settings=settings) as library:
            for q in [*common, f"a {common[0].split()[0]} shape"]:
                hits = library.search(q, top_k=top_k, filters={"kind": "object"})
                results.append({"query": q, "hits": [h.to_dict() for h in hits]})
            if clip_truth:  # an object in the clips: its track, with when it is on screen
                q = Counter(label for spans in clip_truth.values() for label, *_ in spans).most_common(1)[0][0]
                hits = library.search(q, top_k=top_k, filters={"kind": "track"})
                results.append({"query": q, "kind": "track", "hits": [h.to_dict() for h in hits]})
    except SegsearchError as exc:
        fail(exc)
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "index": summary.to_dict(),
                    "queries": results,
                    "scenes": str(folder),
                    "videos": str(clips) if videos else None,
                    "data": str(settings.data),
                }
            )
        )
        return
    print_summary(summary.to_dict())
    for r in results:
        typer.secho(f'\n"{r["query"]}"', bold=True)
        for h in r["hits"]:
            x, y, w, hh = h["bbox"]
            name = Path(h["image_path"]).name
            if h["kind"] == "track":
                shown = ", ".join(f"{lab} {a:.1f}-{b:.1f} s" for lab, a, b in clip_truth.get(name, []))
                span = f"{h['start_s']:.1f}-{h['end_s']:.1f} s"
                typer.echo(f"  {h['score']:.3f}  {name}  {span}  box=({x},{y},{w},{hh})  clip has: {shown}")
                continue
            shown = ", ".join(truth.get(name, []))
            typer.echo(f"  {h['score']:.3f}  {name}  box=({x},{y},{w},{hh})  scene has: {shown}")
    typer.echo(
        f"\nscenes in {folder}; the library remembers its models, so try:\n"
        f'  segsearch search "white star" --data {settings.data}\n'
        f"  segsearch serve --data {settings.data}\n"
        "The bundled models know only coloured shapes: for real photos, `segsearch index PHOTOS` with the "
        "default models (downloaded on first use)."
    )


def _write_demo_videos(folder: Path, n: int) -> dict[str, list[tuple[str, float, float]]]:
    """``n`` shapes-world clips; per file, each object's label and when it is in view."""
    from segsearch.eval.videos import VIDEO_DEMO_SEEDS, make_video, write_mp4

    truth = {}
    for seed in VIDEO_DEMO_SEEDS[:n]:
        folder.mkdir(parents=True, exist_ok=True)
        name, video = f"clip-{seed}.mp4", make_video(seed)
        if not (folder / name).exists():
            write_mp4(video, folder / name)
        spans = video.truth([k * 0.5 for k in range(int(video.duration_s * 2))])
        truth[name] = [(" ".join(g["label"]), g["start_s"], g["end_s"]) for g in spans]
    return truth


def _write_demo_scenes(folder: Path, seeds) -> dict[str, list[str]]:
    from PIL import Image

    from segsearch.eval.shapes import make_scene

    truth = {}
    for seed in seeds:
        name = f"scene-{seed}.png"
        sc = make_scene(seed)
        if not (folder / name).exists():
            Image.fromarray(sc.image).save(folder / name)
        truth[name] = sc.captions
    return truth
