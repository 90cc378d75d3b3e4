"""The reader stage: look a path up (skip it unchanged without reading), then read, hash and
decode it in worker threads, a bounded window ahead of the model, so memory stays flat however
large the library is. Decoding errors are kept as values: the image fails alone."""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from segsearch.errors import ImageError
from segsearch.identity import image_id
from segsearch.images import DecodedImage, decode_image
from segsearch.settings import Settings
from segsearch.store.sql import Catalog, ImagePathRow, ImageRow
from segsearch.video import VideoError, VideoInfo, check_length, is_video, probe

from segsearch.indexer.results import Outcome, StageTimes

HASH_CHUNK = 1 << 20  # videos are hashed 1 MiB at a time


def _bare(exc: BaseException) -> BaseException:
    """An error kept as a value, cut from its traceback and chained errors (whose frames hold the
    file's bytes and decoder state): freed with the value, not at the next garbage collection."""
    exc.__traceback__ = exc.__context__ = exc.__cause__ = None
    return exc


@dataclass(frozen=True)
class Look:
    """A path looked at before reading: its stat and what the catalog knows of it (if anything)."""

    stat: os.stat_result
    known: tuple[ImagePathRow, ImageRow] | None


@dataclass(frozen=True)
class Read:
    """A file read, hashed and decoded (or the reason it could not be decoded)."""

    look: Look
    image_id: str
    size: int
    # None: hashed only (the Ray engine decodes in its actors); a video is probed, not decoded: its
    # frames are streamed by the video stage
    decoded: DecodedImage | VideoInfo | ImageError | None


def look(catalog: Catalog, path: Path, fingerprint: str, force: bool) -> Outcome | Look:
    """Before reading: an Outcome when the file can be skipped (unchanged since it was indexed with
    this fingerprint) or cannot be read, else what is known of it."""
    try:
        st = os.stat(path)
        if not os.path.isfile(path):
            return Outcome("failed", error="not a regular file")
    except OSError as exc:
        return Outcome("failed", error=f"cannot read file: {exc.strerror or exc}")
    known = catalog.lookup_path(str(path))
    if (
        known
        and not force
        and known[0].size_bytes == st.st_size
        and known[0].mtime_ns == st.st_mtime_ns
        and known[1].status == "indexed"
        and known[1].fingerprint == fingerprint
    ):
        return Outcome("skipped")  # unchanged since it was indexed: not even re-read
    return Look(st, known)


class Reader:
    def __init__(self, settings: Settings, times: StageTimes):
        self.settings = settings
        self.times = times

    def read(self, path: Path, looked: Outcome | Look, *, decode: bool = True) -> Outcome | Read:
        """Worker-thread stage: read, hash and decode."""
        if isinstance(looked, Outcome):
            return looked
        if is_video(path):
            return self.read_video(path, looked)
        t0 = time.perf_counter()
        cap = self.settings.max_image_bytes
        if looked.stat.st_size > cap:  # from the size, before a byte is read
            return Outcome(
                "failed",
                error=f"file is {looked.stat.st_size:,} bytes, above the photo cap of {cap:,} "
                "(SEGSEARCH_MAX_IMAGE_BYTES)",
            )
        try:
            with open(path, "rb") as f:
                data = f.read(cap + 1)  # the file may have grown since its stat: never more than the cap
        except OSError as exc:
            return Outcome("failed", error=f"cannot read file: {exc.strerror or exc}")
        if len(data) > cap:
            return Outcome("failed", error=f"file grew past the photo cap of {cap:,} bytes while being read")
        iid = image_id(data)
        t1 = time.perf_counter()
        self.times.add("read_hash", t1 - t0)
        if not decode:
            return Read(looked, iid, len(data), None)
        decoded: DecodedImage | ImageError
        try:
            decoded = decode_image(data, max_pixels=self.settings.max_image_pixels)
        except ImageError as exc:
            # kept as a value without its traceback: the traceback's frames hold the file's bytes,
            # and the error held by this frame would make a cycle keeping them alive
            decoded = _bare(exc)
        self.times.add("decode", time.perf_counter() - t1)
        return Read(looked, iid, len(data), decoded)

    def read_video(self, path: Path, looked: Look) -> Outcome | Read:
        """A video is hashed in chunks (never held whole) and its header probed."""
        t0 = time.perf_counter()
        h, size = hashlib.sha256(), 0
        try:
            with open(path, "rb") as f:
                while chunk := f.read(HASH_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            return Outcome("failed", error=f"cannot read file: {exc.strerror or exc}")
        t1 = time.perf_counter()
        self.times.add("read_hash", t1 - t0)
        try:
            if size == 0:
                raise VideoError("empty file (0 bytes)")
            info: VideoInfo | ImageError = probe(path, max_pixels=self.settings.max_image_pixels)
            check_length(info, self.settings.max_video_seconds)
        except ImageError as exc:
            info = _bare(exc)
        self.times.add("decode", time.perf_counter() - t1)
        return Read(looked, h.hexdigest(), size, info)

    def prefetch(
        self, paths: list[Path], look_up: Callable[[Path], Outcome | Look]
    ) -> Iterator[tuple[Path, Outcome | Read]]:
        """(path, read result) in input order; up to ``prefetch`` files read ahead in threads.
        ``look_up`` runs on the calling thread (it uses SQL)."""
        from concurrent.futures import ThreadPoolExecutor

        window = max(1, self.settings.prefetch)
        with ThreadPoolExecutor(
            max_workers=max(1, self.settings.read_workers), thread_name_prefix="segsearch-read"
        ) as pool:
            pending: deque = deque()
            for path in paths:
                pending.append((path, pool.submit(self.read, path, look_up(path))))
                if len(pending) >= window:
                    p, fut = pending.popleft()
                    yield p, fut.result()
            while pending:
                p, fut = pending.popleft()
                yield p, fut.result()
