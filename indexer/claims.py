"""Several indexers on one library: each image is *claimed* in SQL before its model work (a lease
renewed by a heartbeat thread, released once the image is committed). An image another live
indexer holds is deferred and looked at again after this indexer's pass; a crashed holder's lease
expires (or, on this host, its dead process is noticed at once) and the image is taken over."""

from __future__ import annotations

import os
import socket
import threading
import uuid

from segsearch.store.sql import Catalog


def default_worker_id() -> str:
    """host:pid:tag, which lets a process on the same host see that a holder's process is gone."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def dead_local_worker(worker: str) -> bool:
    """True for a default worker id (host:pid:tag) of a process on this host that no longer runs."""
    rest = worker.split(":")
    if len(rest) < 3 or not rest[-2].isdigit():
        return False
    host, pid = ":".join(rest[:-2]), int(rest[-2])
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def claim(catalog: Catalog, image_id: str, worker: str, lease_s: float) -> bool:
    """Claim an image for ``worker``; False while another live indexer holds it."""
    if catalog.claim(image_id, worker, lease_s):
        return True
    # a holder on this machine whose process is gone (killed) need not be waited for
    holder = catalog.claim_holder(image_id)
    if holder is not None and dead_local_worker(holder.worker):
        return catalog.take_over(image_id, holder.worker, worker, lease_s)
    return holder is None and catalog.claim(image_id, worker, lease_s)


def held_by_other(catalog: Catalog, image_id: str, worker: str) -> bool:
    """True while another live indexer holds the image's claim."""
    holder = catalog.claim_holder(image_id)
    return holder is not None and holder.worker != worker and not dead_local_worker(holder.worker)


class Heartbeat:
    """Renews this indexer's claims every lease/3 seconds while a run lasts."""

    def __init__(self, catalog: Catalog, worker: str, lease_s: float):
        self.catalog, self.worker, self.lease_s = catalog, worker, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="segsearch-claims", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.catalog.renew_claims(self.worker, self.lease_s)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease has slack
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self.catalog.release_worker_claims(self.worker)  # interrupted: others may go on at once
        except Exception:  # noqa: BLE001 - never hide the run's own error
            pass
