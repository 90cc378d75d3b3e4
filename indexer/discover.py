"""Find image and video files: files, folders (recursive) and globs; hidden entries skipped;
deterministic (sorted) order; each path once."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from segsearch.video import MEDIA_EXTENSIONS


def _hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _walk(root: Path) -> Iterator[Path]:
    # os.walk with sorted dirs/files: deterministic, and does not follow symlinked folders
    # (no loops); symlinked files are returned like any file.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in MEDIA_EXTENSIONS:
                yield Path(dirpath) / name


def discover(inputs: Iterable[str | Path]) -> Iterator[Path]:
    """Yield absolute paths of image and video files. Explicitly named files are taken whatever their
    extension (the decoder decides); folders and globs yield known image and video extensions only."""
    seen: set[Path] = set()
    for raw in inputs:
        raw = str(raw)
        p = Path(raw).expanduser()
        if p.is_dir():
            candidates: Iterable[Path] = _walk(p)
        elif p.exists() or p.is_symlink():
            candidates = [p]
        elif glob.has_magic(raw):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(raw), recursive=True))
            candidates = (
                f
                for m in matches
                if not _hidden(m)
                for f in (_walk(m) if m.is_dir() else [m] if m.suffix.lower() in MEDIA_EXTENSIONS else [])
            )
        else:
            raise FileNotFoundError(f"no such file, folder or glob match: {raw}")
        for c in candidates:
            a = Path(os.path.abspath(c))
            if a not in seen:
                seen.add(a)
                yield a


def missing_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """The inputs ``discover`` would refuse (neither an existing path nor a glob), found without
    walking any folder: for checks before work is handed on (CLI to server, server to its job)."""
    return [
        str(raw) for raw in inputs if not (os.path.lexists(os.path.expanduser(str(raw))) or glob.has_magic(str(raw)))
    ]
