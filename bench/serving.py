"""A real ``segsearch serve`` for the benchmarks: started on a free loopback port, waited for until
``/readyz`` answers 200, stopped afterwards."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager


@contextmanager
def running_server(env: dict, *args: str, python: str = sys.executable, timeout: float = 120):
    """Yield ``(process, base_url)``; ``env`` is the whole environment of the server."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [python, "-m", "segsearch", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.3)
        yield proc, base
    finally:
        proc.terminate()
        proc.wait(30)
