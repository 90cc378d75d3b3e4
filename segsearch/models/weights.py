"""Checkpoint download and verification.

A checkpoint is only ever handed to a loader after its SHA-256 matched. Downloads stream
into ``<file>.part`` (resumed with an HTTP Range request when the server allows it), are
hashed as they arrive and renamed into place only when complete and correct. A verified
file gets a small ``<file>.verified`` stamp (size, mtime, sha256) so that a multi-GB
checkpoint is not re-hashed on every start; any change of size or mtime re-hashes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx

from segsearch.errors import ChecksumMismatch, WeightsUnavailable
from segsearch.models.hub import HubWeights
from segsearch.models.registry import Weights

CHUNK = 1 << 20


def _bundled_checkpoints() -> Path:
    """Where the bundled ``*-tiny.pt`` models are: package data of ``segsearch.checkpoints``
    (folder ``checkpoints/`` in a source checkout, ``site-packages/segsearch/checkpoints`` in a wheel)."""
    from importlib.resources import files

    return Path(str(files("segsearch.checkpoints")))


BUNDLED_CHECKPOINTS = _bundled_checkpoints()
BUNDLED_HINT = (
    "Without internet, use the bundled small models: `segsearch demo`, or "
    "`--sam sam-shapes-tiny --clip clip-shapes-tiny` (see `segsearch models list`)."
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def is_verified(path: Path, sha256: str, stamp: Path | None = None) -> bool:
    """True when ``path`` has ``sha256``; a stamp (size, mtime, hash) saves re-hashing next time."""
    st = path.stat()
    stamp = stamp or _stamp_path(path)
    try:
        data = json.loads(stamp.read_text())
        if data == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}:
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(path) != sha256:
        return False
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}))
    except OSError:
        pass  # read-only checkpoints folder: verify again next time
    return True


def local_path(weights: Weights, checkpoints: Path) -> Path:
    """Where the file should be. Absolute filenames (user files) are used as they are; bundled
    files are looked up in the repo's checkpoints folder when not in ``checkpoints``."""
    p = Path(weights.filename)
    if p.is_absolute():
        return p
    candidate = Path(checkpoints) / p
    if not candidate.exists() and weights.url is None and (BUNDLED_CHECKPOINTS / p).exists():
        return BUNDLED_CHECKPOINTS / p
    return candidate


def is_present(weights: Weights | HubWeights, checkpoints: Path) -> bool:
    """Whether a copy is here already (not verified; no network)."""
    if isinstance(weights, HubWeights):
        from huggingface_hub import try_to_load_from_cache

        from segsearch.models.hub import expected, placed_path

        if placed_path(weights, checkpoints).is_file():
            return True
        found = try_to_load_from_cache(
            weights.repo, weights.filename, revision=expected(weights, checkpoints)[0] or "main"
        )
        return isinstance(found, str)
    return local_path(weights, checkpoints).exists()


def ensure_weights(
    weights: Weights | HubWeights,
    checkpoints: Path,
    *,
    offline: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Return the path of a verified copy of ``weights``, downloading it if needed (a plain URL,
    or the Hugging Face Hub: ``segsearch.models.hub``)."""
    if isinstance(weights, HubWeights):
        from segsearch.models.hub import ensure_hub_weights

        return ensure_hub_weights(weights, checkpoints, offline=offline, timeout=timeout)
    path = local_path(weights, checkpoints)
    if path.exists():
        if is_verified(path, weights.sha256):
            return path
        if weights.url is None:
            raise ChecksumMismatch(
                f"{path} does not match its expected SHA-256 {weights.sha256}; the file is corrupt "
                "or not the checkpoint it claims to be. Replace it with a good copy."
            )
        # corrupt or truncated download from earlier: never load it, fetch again
        path.unlink()
        _stamp_path(path).unlink(missing_ok=True)

    if weights.url is None:
        raise WeightsUnavailable(
            f"Checkpoint {weights.filename} is missing: place it at {path} (SHA-256 {weights.sha256}). {BUNDLED_HINT}"
        )
    if offline:
        raise WeightsUnavailable(_offline_message(weights, path, "offline mode is on"))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download(weights, path, progress=progress, timeout=timeout)
    except httpx.HTTPError as exc:
        raise WeightsUnavailable(_offline_message(weights, path, f"download failed: {exc}")) from exc
    return path


def _offline_message(weights: Weights, path: Path, why: str) -> str:
    return (
        f"Cannot fetch checkpoint {weights.filename} ({why}). Download {weights.url} yourself and "
        f"place it at {path} (SHA-256 {weights.sha256}), or set SEGSEARCH_CHECKPOINTS to the folder "
        f"that holds it. {BUNDLED_HINT}"
    )


def _download(weights: Weights, path: Path, *, progress: bool, timeout: float) -> None:
    part = path.with_name(path.name + ".part")
    for _attempt in range(2):  # second attempt starts from scratch if a resumed file is bad
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with httpx.stream("GET", weights.url, headers=headers, follow_redirects=True, timeout=timeout) as r:
            if r.status_code == 416:  # nothing left to fetch (or bad range): start over
                part.unlink(missing_ok=True)
                continue
            r.raise_for_status()
            if r.status_code != 206:
                offset = 0  # server ignored the range
            h = hashlib.sha256()
            if offset:
                with open(part, "rb") as f:
                    for chunk in iter(lambda: f.read(CHUNK), b""):
                        h.update(chunk)
            total = int(r.headers.get("content-length", 0)) + offset or weights.size
            with open(part, "ab" if offset else "wb") as out, _progress(progress, weights.filename, total) as bar:
                bar.advance(offset)
                for chunk in r.iter_bytes(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    bar.advance(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        if h.hexdigest() == weights.sha256:
            os.replace(part, path)
            st = path.stat()
            _stamp_path(path).write_text(
                json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": weights.sha256})
            )
            return
        part.unlink(missing_ok=True)
        if not offset:
            break
    raise ChecksumMismatch(
        f"Downloaded {weights.url} but its SHA-256 does not match {weights.sha256}; "
        "the file was discarded. Try again, or download it yourself and check it."
    )


class _Bar:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)


class _progress:
    def __init__(self, enabled: bool, name: str, total: int | None):
        self.enabled, self.name, self.total = enabled, name, total
        self.p = None

    def __enter__(self) -> _Bar:
        if not self.enabled:
            return _Bar(None, None)
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        self.p = Progress(
            "[bold]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self.p.__enter__()
        return _Bar(self.p, self.p.add_task(f"downloading {self.name}", total=self.total))

    def __exit__(self, *exc):
        if self.p is not None:
            self.p.__exit__(*exc)
