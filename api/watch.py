"""``segsearch serve --watch DIR…``: keep folders indexed while serving.

At start the folders are indexed once (whatever changed while the server was down); then
``watchfiles`` reports added, modified and deleted files, which become index jobs: new and changed
image files are indexed (a changed file is re-indexed, its old segments removed), deleted ones are
forgotten (an image with no path left loses its segments and vectors).
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


def _wanted(path: str) -> bool:
    p = Path(path)
    return p.suffix.lower() in MEDIA_EXTENSIONS and not any(part.startswith(".") for part in p.parts)


class Watcher:
    def __init__(self, services, folders: list[str]):
        self.services = services
        self.folders = [str(Path(f).expanduser().resolve()) for f in folders]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segsearch-watch", daemon=True)

    def start(self) -> None:
        missing = [f for f in self.folders if not Path(f).is_dir()]
        if missing:
            from segsearch.errors import ConfigError

            raise ConfigError(f"--watch: not a folder: {', '.join(missing)}")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from watchfiles import Change, watch

        caught_up = False
        try:
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
                    self.services.jobs.submit("index", {"paths": self.folders, "force": False, "source": "watch"})
                    caught_up = True
                added = sorted({p for c, p in changes if c != Change.deleted and _wanted(p) and Path(p).is_file()})
                removed = sorted({p for c, p in changes if c == Change.deleted and _wanted(p)})
                if added or removed:
                    log.info("watch: %d new or changed, %d deleted", len(added), len(removed))
                    self.services.jobs.submit(
                        "index", {"paths": added, "removed": removed, "force": False, "source": "watch"}
                    )
        except Exception:  # noqa: BLE001 - the server goes on without the watcher
            log.exception("the folder watcher stopped")
