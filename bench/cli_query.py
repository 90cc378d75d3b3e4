"""A cold `segsearch search "red circle"` from the shell: seconds and peak memory per query.

    python bench/cli_query.py                 # bundled models, 16 demo scenes; 3 runs of each
    python bench/cli_query.py --runs 5 --json

Each query is a new process, as a user types it. Rows, all in one run:

* ``torch (before)``: the text query through open_clip and torch (what every CLI query paid
  before the NumPy text tower; measured by moving the export away).
* ``numpy text tower``: the default now (``segsearch/models/text_tower.py``).
* ``through serve``: the CLI handing the query to a running ``segsearch serve`` on the same
  data directory (found through ``server.json``).
* ``ViT-B/32 text, torch`` vs ``ViT-B/32 text, numpy``: the real-size text tower (random weights)
  encoding one query in a fresh process, import and load included.

Peak memory is the child's maximum RSS (``os.wait4``). Target (issue 32): cold ≤ 3 s and ≤ 400 MB
with the bundled models on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEGSEARCH = [sys.executable, "-m", "segsearch"]


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds, peak MiB, stdout) of one child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own peak RSS
        took = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        out = out.read()
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read()[-2000:]}")
    return took, usage.ru_maxrss / 1024, out


def summary(name: str, got: list[tuple[float, float, str]]) -> dict:
    """A table row from ``timed`` results: median seconds, largest peak, the first hit printed."""
    return {
        "query": name,
        "s": round(statistics.median(g[0] for g in got), 2),
        "peak_mib": round(max(g[1] for g in got)),
        "first_hit": got[-1][2].splitlines()[0] if got[-1][2] else "",
    }


def row(name: str, cmd: list[str], env: dict, runs: int) -> dict:
    return summary(name, [timed(cmd, env) for _ in range(runs)])


VIT_B = """
import sys, time
t = time.perf_counter()
mode, data = sys.argv[1], sys.argv[2]
from segsearch.models import get_clip_spec
spec = get_clip_spec("clip-vit-b-32")
if mode == "numpy":
    from dataclasses import replace
    from segsearch.models.text_tower import TextTower
    v = TextTower.open(data, replace(spec, weights=None).fingerprint).embed_texts(["red circle"])
else:
    from dataclasses import replace
    from segsearch.models.clip import ClipEmbedder
    from segsearch.settings import Settings
    v = ClipEmbedder.from_spec(replace(spec, weights=None), Settings().checkpoints).embed_texts(["red circle"])
print(round(time.perf_counter() - t, 3), v.shape)
"""


EXPORT = """
import sys
from dataclasses import replace
from segsearch.models import get_clip_spec
from segsearch.models.clip import ClipEmbedder
from segsearch.models.text_tower import export
from segsearch.settings import Settings
spec = replace(get_clip_spec("clip-vit-b-32"), weights=None)
export(ClipEmbedder.from_spec(spec, Settings().checkpoints), sys.argv[1])
"""


def vit_b_rows(work: Path, env: dict, runs: int) -> list[dict]:
    # in a child: a child's peak RSS (wait4) counts what it inherited at fork, so this process stays small
    subprocess.run([sys.executable, "-c", EXPORT, str(work)], env=env, check=True, capture_output=True)
    rows = []
    for mode in ("torch", "numpy"):
        r = row(f"ViT-B/32 text, {mode}", [sys.executable, "-c", VIT_B, mode, str(work)], env, runs)
        rows.append(r)
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-vit-b", action="store_true", help="skip the real-size text tower rows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segsearch-bench-cli-"))
    data = work / "lib"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSEARCH_")}
    if not (data / "segsearch.db").exists():
        subprocess.run([*SEGSEARCH, "demo", "--data", str(data), "--scenes", str(args.scenes), "--videos", "0"],
                       env=env, check=True, capture_output=True)  # fmt: skip
    query = [*SEGSEARCH, "search", "red circle", "--data", str(data)]
    tower, away = data / "text-tower", work / "text-tower.away"
    rows = []
    shutil.rmtree(away, ignore_errors=True)
    tower.rename(away)
    try:  # the torch path: each query re-exports, so the export is moved away again before each
        got = []
        for _ in range(args.runs):
            got.append(timed(query, env))
            shutil.rmtree(tower, ignore_errors=True)
        rows.append(summary("torch (before)", got))
    finally:
        tower.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tower, ignore_errors=True)
        away.rename(tower)
    rows.append(row("numpy text tower", query, env, args.runs))
    port = free_port()
    server = subprocess.Popen(
        [*SEGSEARCH, "serve", "--data", str(data), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        rows.append(row("through serve", query, env, args.runs))
    finally:
        server.terminate()
        server.wait(30)
    if not args.no_vit_b:
        rows.extend(vit_b_rows(work / "vit-b", env, args.runs))
    base = rows[0]["s"]
    for r in rows[:3]:
        r["x_faster_than_torch"] = round(base / r["s"], 2)
    same = len({r["first_hit"] for r in rows[:3]}) == 1
    if args.json:
        print(json.dumps({"rows": rows, "same_first_hit": same, "cpus": os.cpu_count()}))
    else:
        print(f"{'query':<22} {'s':>6} {'peak MiB':>9} {'x':>6}")
        for r in rows:
            print(f"{r['query']:<22} {r['s']:>6.2f} {r['peak_mib']:>9} {r.get('x_faster_than_torch', ''):>6}")
        print(f"same first hit on every path: {same}   ({os.cpu_count()} CPUs, median of {args.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
