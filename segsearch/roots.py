"""A server's data boundary: the library roots it may read and index under.

``segsearch serve --root DIR`` (repeatable; ``--watch`` folders are roots too) names the folders
an index job posted over HTTP may reach. A job names paths relative to a root (or absolute under
one); each is resolved with symlinks followed (``os.path.realpath``) and refused unless the result
lies under a root. "Outside the roots" and "not there" get the same answer, so the API cannot be
used to probe which files exist. Globs keep their pattern; the folder before the first wildcard
must resolve under a root, and ``..`` may not appear after it.

The owner of the data directory (the ``segsearch`` CLI handing work to a server that holds it,
proved by the token in ``server.json``) is not bound by roots: it may already read what it names.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from segsearch.errors import QueryError, SegsearchError


class OutsideRoots(QueryError):
    """A path the server will not read: outside its roots, or missing (one answer for both)."""


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Roots:
    dirs: tuple[str, ...]  # real (symlink-free) absolute paths

    @classmethod
    def of(cls, dirs) -> Roots:
        real = []
        for d in dirs or ():
            r = os.path.realpath(os.path.expanduser(os.fsdecode(d)))
            if r not in real:
                real.append(r)
        return cls(tuple(real))

    def __bool__(self) -> bool:
        return bool(self.dirs)

    def contains(self, path: str | Path) -> bool:
        """Whether ``path``, symlinks resolved, lies under a root."""
        real = os.path.realpath(os.fsdecode(path))
        return any(_under(real, r) for r in self.dirs)

    def refuse(self, given: str) -> OutsideRoots:
        where = ", ".join(self.dirs) if self.dirs else "none: start the server with --root DIR"
        return OutsideRoots(f"{given!r} is not a file, folder or glob under the server's library roots ({where})")

    def resolve(self, given: str) -> str:
        """A path as an API caller gave it -> the real absolute path (or glob) under a root.
        Raises ``OutsideRoots`` alike for paths outside the roots and for paths that do not exist."""
        if not given or "\x00" in given:
            raise self.refuse(given)
        candidates = [given] if os.path.isabs(given) else [os.path.join(r, given) for r in self.dirs]
        for cand in candidates:
            got = self._resolve_one(cand)
            if got is not None:
                return got
        raise self.refuse(given)

    def _resolve_one(self, cand: str) -> str | None:
        if glob.has_magic(cand):
            parts = Path(cand).parts
            fixed = next(i for i, p in enumerate(parts) if glob.has_magic(p))
            if ".." in parts[fixed:]:
                return None
            base = os.path.realpath(os.path.join(*parts[:fixed]))
            if not (os.path.isdir(base) and any(_under(base, r) for r in self.dirs)):
                return None
            return os.path.join(base, *parts[fixed:])
        if not os.path.lexists(cand):
            return None
        real = os.path.realpath(cand)
        if not os.path.exists(real) or not any(_under(real, r) for r in self.dirs):
            return None
        return real


# Entries (folders and files) walked between two cancel/deadline checks.
CHECK_EVERY = 256


class DiscoveryLimit(SegsearchError):
    """A walk found too many files or took too long (a server job's bounds)."""


@dataclass
class Bounds:
    """Bounds of a file walk (``segsearch.indexer.discover``) for a server's job."""

    roots: Roots | None = None  # files must resolve under these (None: anywhere)
    max_files: int | None = None
    timeout_s: float | None = None
    check: Callable[[], None] | None = None  # raises to stop (a cancelled job)
    _deadline: float | None = field(default=None, init=False)
    _ticks: int = field(default=0, init=False)

    def start(self) -> None:
        self._deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s

    def tick(self, n: int = 1) -> None:
        self._ticks += n
        if self._ticks < CHECK_EVERY:
            return
        self._ticks = 0
        if self.check is not None:
            self.check()
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise DiscoveryLimit(
                f"finding the files took over {self.timeout_s:g} s (SEGSEARCH_DISCOVER_TIMEOUT_S); name smaller folders"
            )

    def allows(self, path: Path) -> bool:
        return self.roots is None or not path.is_symlink() or self.roots.contains(path)
