"""Weights that live on the Hugging Face Hub (open_clip's models since the OpenAI CDN died).

Fetched with ``huggingface_hub.hf_hub_download``, so the hub's own conventions hold: its cache
(``HF_HOME`` / ``HF_HUB_CACHE``), offline mode (``HF_HUB_OFFLINE=1``, and ours,
``SEGSEARCH_OFFLINE``), resumable downloads (``.incomplete`` files, Range requests) and
``HF_ENDPOINT`` (a mirror, or the loopback fake hub of our tests). On top of it, ours:

* a **pinned revision** (a commit) where a public source shows one, so a repo that changes
  upstream cannot change a library's vectors;
* the file's **SHA-256 checked** after download (and the ``.verified`` stamp logic of
  ``weights.py``, kept in our checkpoints folder, so a 1.7 GB file is not re-hashed on each start);
  a mismatch deletes the cached copy and names both hashes;
* where no public source shows a pin, **trust on first use**: the commit and SHA-256 of the first
  download are recorded in ``<checkpoints>/hub-pins.json`` and every later copy must match them.
  ``segsearch models list`` says which models are pinned and which are not. We never invent a hash.
* a file placed by hand at ``<checkpoints>/hub/<org>--<repo>/<file>`` is used as is (after the
  checks), for machines that cannot reach the hub at all.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from segsearch.errors import ChecksumMismatch, WeightsUnavailable

log = logging.getLogger("segsearch.models")
PINS = "hub-pins.json"
_PINS_LOCK = threading.Lock()
# How long the hub's name may take to resolve before we call the machine offline. huggingface_hub
# retries a failed connection 5 times with backoff (~23 s, a raw warning line each time); a name
# that does not resolve will not resolve on the 5th try, so we ask once, up front.
RESOLVE_TIMEOUT_S = 5.0


def unresolvable(url: str, timeout: float = RESOLVE_TIMEOUT_S) -> str | None:
    """Why the host of ``url`` cannot be resolved (no network, no DNS), or None when it can.
    getaddrinfo has no timeout of its own: it runs on a daemon thread we stop waiting for."""
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    if not host:
        return f"{url!r} names no host"
    answer: list[str | None] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, None)
            answer.append(None)
        except OSError as exc:
            answer.append(f"cannot resolve {host}: {exc.strerror or exc}")

    t = threading.Thread(target=resolve, daemon=True, name="segsearch-resolve")
    t.start()
    t.join(timeout)
    return answer[0] if answer else f"resolving {host} took over {timeout:g} s"


class _HubRetryLines(logging.Filter):
    """huggingface_hub's per-retry warnings ("'...' thrown while requesting HEAD ...", "Retrying in
    4s [Retry 3/5]") become debug lines of ours: the one error we raise after says what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "thrown while requesting" in msg or msg.startswith("Retrying in "):
            log.debug("hub: %s", msg)
            return False
        return True


def _quiet_hub_retries() -> None:
    hub_http = logging.getLogger("huggingface_hub.utils._http")
    api = logging.getLogger("huggingface_hub.hf_api")
    for logger in (hub_http, api):
        if not any(isinstance(f, _HubRetryLines) for f in logger.filters):
            logger.addFilter(_HubRetryLines())


@dataclass(frozen=True)
class HubWeights:
    """A file in a Hub model repo. ``revision`` None: not pinned here (the first download's
    commit is recorded); ``sha256`` None: not verifiable here (trust on first use)."""

    repo: str
    filename: str
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None

    @property
    def url(self) -> str:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        return f"{endpoint}/{self.repo}/resolve/{self.revision or 'main'}/{self.filename}"

    @property
    def key(self) -> str:
        return f"{self.repo}/{self.filename}"

    @property
    def identity(self) -> str:
        """What a model's fingerprint is built from: the pinned hash, else repo + file + revision."""
        return self.sha256 or f"{self.repo}@{self.revision or 'unpinned'}/{self.filename}"

    @property
    def pin_status(self) -> str:
        if self.sha256 and self.revision:
            return "pinned"
        return "trust on first use (unverified here)"


def placed_path(w: HubWeights, checkpoints: Path) -> Path:
    return Path(checkpoints) / "hub" / w.repo.replace("/", "--") / w.filename


def read_pins(checkpoints: Path) -> dict:
    try:
        return json.loads((Path(checkpoints) / PINS).read_text())
    except (OSError, ValueError):
        return {}


def _record_pin(checkpoints: Path, w: HubWeights, revision: str | None, sha256: str, size: int) -> None:
    with _PINS_LOCK:
        pins = read_pins(checkpoints)
        pins[w.key] = {"revision": revision, "sha256": sha256, "size": size}
        path = Path(checkpoints) / PINS
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{PINS}.{os.getpid()}")
            tmp.write_text(json.dumps(pins, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not record the hash of %s in %s: %s", w.key, path, exc)


def expected(w: HubWeights, checkpoints: Path) -> tuple[str | None, str | None]:
    """(revision, sha256) a copy must have: the registry's pin, else the first download's."""
    pin = read_pins(checkpoints).get(w.key, {})
    return (w.revision or pin.get("revision")), (w.sha256 or pin.get("sha256"))


def _commit_of(path: str) -> str | None:
    parts = Path(path).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline_message(w: HubWeights, revision: str | None, checkpoints: Path, why: str) -> str:
    from segsearch.models.weights import BUNDLED_HINT

    rev = revision or "main"
    return (
        f"Cannot fetch {w.filename} of Hugging Face model {w.repo} (revision {rev}): {why}. "
        f"On a machine with internet run `hf download {w.repo} {w.filename} --revision {rev}` and copy the "
        f"Hugging Face cache ({_hub_cache()}; HF_HOME / HF_HUB_CACHE move it), or place the file at "
        f"{placed_path(w, checkpoints)}. {BUNDLED_HINT}"
    )


def _download(w: HubWeights, revision: str | None, checkpoints: Path, offline: bool, timeout: float) -> str:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    _quiet_hub_retries()
    offline = offline or bool(constants.HF_HUB_OFFLINE)
    no_network = None if offline else unresolvable(constants.ENDPOINT)
    what = f"{w.filename} of {w.repo} (revision {revision or 'main'})"
    try:
        return hf_hub_download(
            w.repo, w.filename, revision=revision, local_files_only=offline or bool(no_network), etag_timeout=timeout
        )
    except LocalEntryNotFoundError as exc:
        if no_network:
            why = f"no network ({no_network}) and it is not in the cache"
        elif offline:
            why = "offline mode is on (SEGSEARCH_OFFLINE or HF_HUB_OFFLINE) and it is not in the cache"
        else:
            why = f"the hub could not be reached ({exc.__cause__ or exc})"
        raise WeightsUnavailable(_offline_message(w, revision, checkpoints, why)) from None
    except GatedRepoError:
        raise WeightsUnavailable(
            f"{what}: the repository is gated (HTTP 401/403); accept its terms on the hub "
            "and log in (`hf auth login` or HF_TOKEN)."
        ) from None
    except RevisionNotFoundError:
        raise WeightsUnavailable(f"{what}: the hub has no such revision (HTTP 404).") from None
    except (EntryNotFoundError, RemoteEntryNotFoundError):
        raise WeightsUnavailable(f"{what}: the repository has no such file (HTTP 404).") from None
    except RepositoryNotFoundError as exc:
        code = exc.response.status_code if exc.response is not None else "404"
        raise WeightsUnavailable(
            f"{what}: repository not found, or private and needs a login (HTTP {code}; `hf auth login` or HF_TOKEN)."
        ) from None
    except HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        raise WeightsUnavailable(f"{what}: the hub answered HTTP {code}: {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:  # network errors after retries, disk full...
        raise WeightsUnavailable(_offline_message(w, revision, checkpoints, f"download failed: {exc}")) from None


def ensure_hub_weights(w: HubWeights, checkpoints: Path, *, offline: bool = False, timeout: float = 60.0) -> Path:
    """A verified local copy of ``w`` (see the module docstring)."""
    from segsearch.models.weights import is_verified, sha256_file

    revision, sha = expected(w, checkpoints)
    stamps = Path(checkpoints) / ".verified" / w.repo.replace("/", "--")
    placed = placed_path(w, checkpoints)
    if placed.is_file():
        path, commit = placed, revision
    else:
        path = Path(_download(w, revision, checkpoints, offline, timeout))
        commit = _commit_of(str(path)) or revision
    stamp = stamps / f"{w.filename}.{commit or 'placed'}.json"
    if sha is not None:
        if is_verified(path, sha, stamp):
            return path
        got = sha256_file(path)
        if path != placed:  # never keep a bad copy in the cache: the next try downloads again
            real = path.resolve()
            path.unlink(missing_ok=True)
            if real != path:
                real.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{w.filename} of {w.repo} (revision {commit or 'main'}) has SHA-256 {got}, expected {sha}"
            + (
                " (pinned in segsearch's model registry)"
                if w.sha256
                else f" (recorded at its first download in {Path(checkpoints) / PINS})"
            )
            + (
                "; the cached copy was deleted, run again to download it anew."
                if path != placed
                else f"; replace {placed} with a good copy."
            )
        )
    got = sha256_file(path)  # trust on first use: this copy defines the model from now on
    log.warning(
        "%s of %s has no published hash we could verify: recorded SHA-256 %s (revision %s) in %s; "
        "later copies must match it",
        w.filename,
        w.repo,
        got,
        commit,
        Path(checkpoints) / PINS,
    )
    _record_pin(checkpoints, w, commit, got, path.stat().st_size)
    is_verified(path, got, stamp)
    return path
