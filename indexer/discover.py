"""Find image and video files: files, folders (recursive) and globs; hidden entries skipped;
deterministic (sorted) order; each path once.

Symlinked folders are never followed (no loops; a folder walk and a glob agree on what they
reach), symlinked files are taken like any file. Globs are matched while walking the folder before
their first wildcard (``wcmatch``, ``**`` for any depth), never by the standard library's
``glob``, which follows symlinked folders into loops. A server's jobs pass ``Bounds``: files only
under its roots (symlinks resolved), at most ``max_files``, a deadline, and a cancel check that
runs every few hundred entries, so a walk stops within a moment of being told.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from segsearch.roots import Bounds, DiscoveryLimit
from segsearch.video import MEDIA_EXTENSIONS


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _media(name: str) -> bool:
    return not _hidden(name) and os.path.splitext(name)[1].lower() in MEDIA_EXTENSIONS


def _walk(root: Path, bounds: Bounds) -> Iterator[Path]:
    # os.walk with sorted dirs/files: deterministic, and does not follow symlinked folders
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        bounds.tick(1 + len(filenames))
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            if _media(name):
                yield Path(dirpath) / name


def _glob(pattern: str, bounds: Bounds) -> Iterator[Path]:
    """Files matching ``pattern``, and the media files under folders matching it."""
    from wcmatch.glob import GLOBSTAR, globmatch

    parts = Path(pattern).parts
    fixed = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    base, depth = Path(*parts[:fixed]), len(parts) - fixed
    deep = any("**" in p for p in parts[fixed:])
    if not base.is_dir():
        return

    def matches(p: str) -> bool:
        return globmatch(p, pattern, flags=GLOBSTAR)

    inside: set[str] = set()  # folders that matched (everything under them is taken)
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        bounds.tick(1 + len(filenames))
        level = 0 if dirpath == str(base) else len(Path(dirpath).relative_to(base).parts)
        here = dirpath in inside
        keep = []
        for d in sorted(x for x in dirnames if not _hidden(x)):
            full = os.path.join(dirpath, d)
            if here or matches(full):
                inside.add(full)
                keep.append(d)
            elif deep or level + 1 < depth:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if _media(name) and (here or matches(os.path.join(dirpath, name))):
                yield Path(dirpath) / name


def discover(inputs: Iterable[str | Path], bounds: Bounds | None = None) -> Iterator[Path]:
    """Yield absolute paths of image and video files. Explicitly named files are taken whatever their
    extension (the decoder decides); folders and globs yield known image and video extensions only."""
    bounds = bounds or Bounds()
    bounds.start()
    seen: set[Path] = set()
    for raw in inputs:
        raw = os.fsdecode(raw)  # str, bytes or a Path
        p = Path(os.path.abspath(os.path.expanduser(raw)))
        if p.is_dir():
            candidates: Iterable[Path] = _walk(p, bounds)
        elif p.exists() or p.is_symlink():
            candidates = [p]
        elif glob.has_magic(raw):
            candidates = _glob(str(p), bounds)
        else:
            raise FileNotFoundError(f"no such file, folder or glob match: {raw}")
        for c in candidates:
            a = Path(os.path.abspath(c))
            if a in seen or not bounds.allows(a):
                continue
            seen.add(a)
            if bounds.max_files is not None and len(seen) > bounds.max_files:
                raise DiscoveryLimit(
                    f"more than {bounds.max_files:,} files (SEGSEARCH_MAX_JOB_FILES); index folders in parts"
                )
            yield a


def missing_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """The inputs ``discover`` would refuse (neither an existing path nor a glob), found without
    walking any folder: for checks before work is handed on (CLI to server, server to its job)."""
    return [
        str(raw) for raw in inputs if not (os.path.lexists(os.path.expanduser(str(raw))) or glob.has_magic(str(raw)))
    ]
