"""A loopback stand-in for the Hugging Face Hub: the ``/{repo}/resolve/{revision}/{file}`` layout
that ``huggingface_hub.hf_hub_download`` speaks (HEAD for metadata: X-Repo-Commit, ETag,
Content-Length; GET with Range for resumed downloads; X-Error-Code on 401/404), served from
memory, with switches to cut a download half-way or to answer with other bytes. Nothing here
reaches the network: tests point ``HF_ENDPOINT`` at it."""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Repo:
    commit: str
    files: dict[str, bytes]
    private: bool = False


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    cut_next_get: int | None = None  # send only this many bytes of the next full GET, then drop it
    url: str = ""

    def add(self, repo: str, files: dict[str, bytes], commit: str | None = None, private: bool = False) -> Repo:
        commit = commit or hashlib.sha1(repo.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[repo] = Repo(commit, files, private)
        return self.repos[repo]

    def gets(self, filename: str) -> list[str | None]:
        return [rng for m, p, rng in self.log if m == "GET" and p.endswith("/" + filename)]


_PATH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _error(self, status: int, code: str) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self, body: bool) -> None:
            hub.log.append((self.command, self.path, self.headers.get("Range")))
            m = _PATH.match(self.path.split("?")[0])
            if not m:
                return self._error(404, "RepoNotFound")
            repo = hub.repos.get(m["repo"])
            if repo is None or repo.private:  # the hub answers 401 for missing and private repos alike
                return self._error(401, "RepoNotFound")
            if m["rev"] not in ("main", repo.commit):
                return self._error(404, "RevisionNotFound")
            data = repo.files.get(m["file"])
            if data is None:
                return self._error(404, "EntryNotFound")
            start = 0
            rng = self.headers.get("Range")
            if rng and (r := re.match(r"bytes=(\d+)-$", rng)):
                start = int(r[1])
            part = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(part)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not body:
                return
            if hub.cut_next_get is not None and not start:
                cut, hub.cut_next_get = hub.cut_next_get, None
                self.wfile.write(part[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(part)

        def do_HEAD(self):  # noqa: N802
            self._serve(body=False)

        def do_GET(self):  # noqa: N802
            self._serve(body=True)

    return Handler


class running:
    """``with running(hub) as url:`` serves ``hub`` on a free loopback port."""

    def __init__(self, hub: FakeHub):
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        self.hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self.hub.url

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def cli_env(hub: FakeHub, tmp_path) -> dict:
    """The environment of a `segsearch` subprocess on a fresh machine whose hub is ``hub``: a private
    HF_HOME, data directory and checkpoints folder under ``tmp_path``, no SEGSEARCH_*/HF_* of ours."""
    import os

    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SEGSEARCH_"))},
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_XET": "1",
        "SEGSEARCH_DATA": str(tmp_path / "data"),
        "SEGSEARCH_CHECKPOINTS": str(tmp_path / "ckpt"),
    }


def run_cli(hub: FakeHub, tmp_path, *args: str, timeout: float = 600):
    """``segsearch ARGS`` (the tiny test models registered) in a subprocess with ``cli_env``."""
    import subprocess
    import sys
    from pathlib import Path

    cli = [sys.executable, str(Path(__file__).parent / "cli_with_tiny_models.py")]
    return subprocess.run([*cli, *args], capture_output=True, text=True, env=cli_env(hub, tmp_path), timeout=timeout)
