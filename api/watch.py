"""``segsearch serve --watch DIR…``: keep folders indexed while serving.

At start the folders are indexed once (whatever changed while the server was down); then
``watchfiles`` reports added, modified and deleted files, which become index jobs: new and changed
image files are indexed (a changed file is re-indexed, its old segments removed), deleted ones are
forgotten (an image with no path left loses its segments and vectors). A folder that appears
(a photo moved into a new sub-folder, a copied tree) is indexed as a folder: its files may have
arrived before the watch on it was in place.

The watch follows the same rule as the start-up scan (``indexer.discover``): symlinked folders are
not followed, so an event under one is ignored. One bad event (a name that is not valid UTF-8, a
file gone while it was looked at) is logged and skipped; the watcher goes on. If the watch itself
fails it is started again with a rescan; ``/readyz`` shows the last error (``watch_error``) and
whether the watcher thread lives (``checks.watch``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from segsearch.video import MEDIA_EXTENSIONS

log = logging.getLogger("segsearch.watch")

# watchfiles groups changes arriving within this many ms into one batch: a camera import or a copy
# of many files becomes one job instead of hundreds.
DEBOUNCE_MS = 1600
# A failed watch is started again after RESTART_FIRST_S, doubling up to RESTART_MAX_S while it
# keeps failing: quick after a one-off (a bad file name), no busy loop on a lasting fault.
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 60.0


def _wanted(path: str) -> bool:
    p = Path(path)
    return p.suffix.lower() in MEDIA_EXTENSIONS and not any(part.startswith(".") for part in p.parts)


def _through_symlink(path: str, folders: list[str]) -> bool:
    """Whether ``path`` lies under a symlinked folder below its watched folder (not followed)."""
    p = Path(path)
    for folder in folders:
        try:
            rel = p.relative_to(folder)
        except ValueError:
            continue
        cur = Path(folder)
        for part in rel.parts[:-1]:
            cur = cur / part
            if cur.is_symlink():
                return True
        return False
    return True  # not under any watched folder at all


class Watcher:
    def __init__(self, services, folders: list[str]):
        self.services = services
        self.folders = [str(Path(f).expanduser().resolve()) for f in folders]
        self._stop = threading.Event()
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="segsearch-watch", daemon=True)

    def start(self) -> None:
        missing = [f for f in self.folders if not Path(f).is_dir()]
        if missing:
            from segsearch.errors import ConfigError

            raise ConfigError(f"--watch: not a folder: {', '.join(missing)}")
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        """Watch until stopped. If the watch itself fails (watchfiles raises on a file name that
        is not UTF-8, and the batch that held it is lost), it is started again after a pause
        (doubling while it keeps failing) with a rescan of the folders, which catches whatever
        that batch held: the walk sees the real names, and a pruning pass forgets files gone."""
        from watchfiles import Change

        failures = 0
        while not self._stop.is_set():
            try:
                self._watch(Change, rescan_prune=failures > 0)
                return
            except Exception as exc:  # noqa: BLE001 - restarted below; /readyz shows the last error
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("watch: restarting after %s (a rescan follows)", self.last_error)
                if self._stop.wait(min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** min(failures - 1, 8))):
                    return

    def _watch(self, Change, *, rescan_prune: bool) -> None:
        from watchfiles import watch

        caught_up = False
        # yield_on_timeout: the first (empty) yield says the watch is in place; only then is the
        # catch-up job submitted, so a file written at any moment is seen by one or the other
        for changes in watch(
            *self.folders,
            stop_event=self._stop,
            debounce=DEBOUNCE_MS,
            recursive=True,
            raise_interrupt=False,
            yield_on_timeout=True,
            rust_timeout=500,
        ):
            if not caught_up:
                request = {"paths": self.folders, "force": False, "source": "watch"}
                if rescan_prune:
                    request["prune"] = self.folders
                self.services.jobs.submit("index", request, internal=True)
                caught_up = True
            try:
                self._handle(changes, Change)
            except Exception as exc:  # noqa: BLE001 - one bad batch must not end the watch
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("watch: a batch of %d changes was skipped", len(changes))

    def _handle(self, changes, Change) -> None:
        added, removed = set(), set()
        for change, p in changes:
            if _through_symlink(p, self.folders) or any(part.startswith(".") for part in Path(p).parts):
                continue
            if change == Change.deleted:
                if _wanted(p):
                    removed.add(p)
            elif Path(p).is_dir() and not Path(p).is_symlink():
                added.add(p)  # a new folder: what it holds may predate its watch
            elif _wanted(p) and Path(p).is_file():
                added.add(p)
        if added or removed:
            log.info("watch: %d new or changed, %d deleted", len(added), len(removed))
            self.services.jobs.submit(
                "index",
                {"paths": sorted(added), "removed": sorted(removed), "force": False, "source": "watch"},
                internal=True,
            )
