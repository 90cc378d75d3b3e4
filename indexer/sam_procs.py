"""SAM in worker processes on a CPU (``SEGSEARCH_SAM_PROCESSES=N``): single-threaded mask generators.

Within one process, SAM's CPU work does not scale past about 1.5x on two cores; the likely reason
is that the decoder is hundreds of small PyTorch calls per prompt batch whose Python side runs
under one GIL. Two processes do not share it: on the 2-core benchmark VM two single-threaded SAMs ran side by side at
0.54 s per image each, against 0.52 alone (1.93x), where one SAM on two threads managed 1.6x.

So on request (``sam_workers`` says why not by default) a CPU run hands its photos to ``N``
processes, each running the configured mask generator single-threaded and cutting the crops
(``build_segments``), while the calling process reads, decodes, embeds (CLIP) and writes. The
processes are started from the already loaded SAM: its weights travel as shared memory (PyTorch's
multiprocessing pickler), so they are not copied per worker and no checkpoint is read again.
Results come back in submission order. A worker that dies (killed for memory, a crash in native
code) breaks the pool: the images it held are redone in the calling process one by one, and a new
pool takes the next images.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from segsearch.models import amg_params

_STATE: dict = {}


def _start(parent: int, sam, engine: str, params: dict, settings, image_size: int) -> None:
    """Worker initializer: tied to the indexing process's life, PyTorch single-threaded, the mask
    generator built around the shared SAM."""
    import torch

    from segsearch.indexer.amg import make_mask_generator

    _die_with(parent)
    torch.set_num_threads(1)
    _STATE.update(gen=make_mask_generator(engine, sam, **params), settings=settings, image_size=image_size)


def _die_with(parent: int) -> None:
    """End this worker when the process that started it ends, however it ends: killed (SIGKILL,
    the OOM killer) it cannot shut its pool down, and its workers would otherwise wait forever
    holding their memory. Linux signals the death (PR_SET_PDEATHSIG); elsewhere, and for a parent
    gone before that was set, a thread looks for it every second."""
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="segsearch-orphan-watch", daemon=True).start()


def _ready() -> bool:
    return "gen" in _STATE


def _segment(iid: str, fingerprint: str, decoded) -> tuple:
    """One image in a worker: (segments, crops, stage seconds). Errors travel back as exceptions."""
    from segsearch.indexer.amg import sam_stage_times
    from segsearch.indexer.working import generate_photo
    from segsearch.indexer.writer import build_segments

    gen = _STATE["gen"]
    t0 = time.perf_counter()
    masks = generate_photo(gen, decoded.rgb, _STATE["settings"].mask_side)
    t1 = time.perf_counter()
    segments, crops = build_segments(iid, fingerprint, decoded, masks, _STATE["settings"], _STATE["image_size"])
    return segments, crops, {**sam_stage_times(gen, t1 - t0), "crops": time.perf_counter() - t1}


class SamProcesses:
    """``workers`` SAM processes, started in the background (``ready`` says when all are up: until
    then the caller keeps running SAM itself). ``submit`` an image; its future gives (segments,
    crops, stage seconds) or raises what the worker raised (``BrokenProcessPool`` if one died)."""

    def __init__(self, models, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        s = models.settings
        self.workers = workers
        args = (os.getpid(), models.sam, models.engine, amg_params(s), s, models.embedder.image_size)
        self._pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_start, initargs=args)
        with _main_script_hidden():  # (the pool starts a process per submit until it has them all)
            self._starting = [self._pool.submit(_ready) for _ in range(workers)]

    def ready(self) -> bool:
        """All workers are up (raises what went wrong if one could not start)."""
        if self._starting and all(f.done() for f in self._starting):
            for f in self._starting:
                f.result()
            self._starting = []
        return not self._starting

    def submit(self, iid: str, fingerprint: str, decoded):
        from concurrent.futures import Future
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._pool.submit(_segment, iid, fingerprint, decoded)
        except BrokenProcessPool as exc:  # a worker died since: the caller sees it where it collects
            broken = Future()
            broken.set_exception(exc)
            return broken

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def single_threaded():
    """PyTorch on one thread in this process while the SAM processes have the cores: CLIP on the
    crops otherwise competes with them (100 bundled-model scenes on 2 cores: CLIP took 8.0 s at 2
    threads against 2.3 s at 1, and the run 2.48 against 2.57 images/s)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@contextmanager
def _main_script_hidden():
    """A spawned process first runs the parent's main script again (as ``__mp_main__``) unless that
    has no file: a user's script calling ``Library.index`` without an ``if __name__ == "__main__"``
    guard would run once more per worker. The workers need nothing from it (their functions live
    here), so while they start, the main module shows no file or spec to ``multiprocessing``."""
    import sys

    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        for k in saved:
            if k == "__file__":
                del main.__dict__[k]
            else:
                main.__dict__[k] = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def sam_workers(models) -> int:
    """SAM processes for a run: ``settings.sam_processes``, at most one per ``GIB_PER_WORKER`` of
    memory; 1 means SAM runs in the calling process. Always 1 on a GPU (one process feeds it), for
    a mask generator given to ``Models`` (it is not rebuilt elsewhere), and under a guard: a
    server's index job yields the cores to queries before each model call, which work already
    handed to other processes could not do.

    Not the default: on the 2-core benchmark VM two processes indexed 100 small scenes 4-6%
    faster than SAM on two threads (bench/RESULTS.md), but 15 mixed photos (one of 24 MP) 20%
    slower, and each process holds ~0.6 GB of its own (PyTorch's runtime; the weights are shared).
    Many cores are where the GIL should cost threads most; that is yet to be measured."""
    settings = models.settings
    n = settings.sam_processes
    if n <= 1 or settings.resolved_device() != "cpu" or models.given_mask_generator or models.guard is not None:
        return 1
    from segsearch.settings import memory_gib

    return max(1, min(n, int(memory_gib() // GIB_PER_WORKER)))


# Memory one worker may need: a 24 MP photo at SAM's defaults peaks at ~1.7 GB in one indexing
# process (the API uses the same 3 GiB per heavy job).
GIB_PER_WORKER = 3
