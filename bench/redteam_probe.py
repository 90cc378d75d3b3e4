"""Issue 30's findings, probed against a real ``segsearch serve`` started by a given Python: one
line per finding with what the server answered, how long it took and its memory. Run it with
another checkout's interpreter to get before/after figures in one sitting:

    python bench/redteam_probe.py                          # this checkout
    python bench/redteam_probe.py --python /old/venv/bin/python --json

The server is keyless (the default) on loopback with one library root (``SEGSEARCH_ROOTS``, which
an older server ignores) holding two shapes-world scenes, indexed first with the bundled models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="The interpreter whose segsearch is probed.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import httpx
    from PIL import Image

    from segsearch.eval.shapes import DEMO_SEEDS, SHAPES_AMG, make_scene

    work = Path(tempfile.mkdtemp(prefix="segsearch-probe-"))
    root, private = work / "root", work / "private"
    for folder, seeds in ((root, DEMO_SEEDS[:2]), (private, DEMO_SEEDS[2:3])):
        folder.mkdir()
        for s in seeds:
            Image.fromarray(make_scene(s).image).save(folder / f"scene-{s}.png")
    amg = [x for k, v in SHAPES_AMG.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    env = {**os.environ, "SEGSEARCH_DATA": str(work / "data"), "SEGSEARCH_OFFLINE": "1"}
    subprocess.run(
        [
            args.python,
            "-m",
            "segsearch",
            "index",
            str(root),
            "--sam",
            "sam-shapes-tiny",
            "--clip",
            "clip-shapes-tiny",
            *amg,
            "--json",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    from serving import running_server  # bench/, this script's folder

    out: list[dict] = []

    def note(finding: str, **what) -> None:
        out.append({"finding": finding, **what, "rss_mib": round(rss_mib(server.pid))})
        if not args.json:  # as it goes: a probe may bring an old server down
            print(" | ".join(f"{k}={v}" for k, v in out[-1].items()), flush=True)

    def wait_job(c, job_id, timeout):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            j = c.get(f"/v1/jobs/{job_id}").json()
            if j["status"] in ("completed", "failed", "cancelled"):
                return j, time.monotonic() - t0
            time.sleep(0.1)
        return c.get(f"/v1/jobs/{job_id}").json(), time.monotonic() - t0

    server_env = {**env, "SEGSEARCH_ROOTS": json.dumps([str(root)])}
    with running_server(server_env, python=args.python) as (server, base), httpx.Client(base_url=base, timeout=60) as c:
        note("startup")
        secret = str(private / f"scene-{DEMO_SEEDS[2]}.png")
        r = c.post("/v1/jobs/index", json={"paths": ["/etc/passwd", secret]})
        note("job naming /etc/passwd and a photo outside the root", status=r.status_code)
        if r.status_code == 202:
            job, _ = wait_job(c, r.json()["job_id"], 60)
            note("... and then served", indexed=(job.get("summary") or {}).get("indexed"))
        r = c.get("/v1/stats", headers={"Host": "attacker.example"})
        note("foreign Host header (DNS rebinding)", status=r.status_code)
        r = c.post(
            "/v1/jobs/repair",
            content="a=1",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
        )
        note("cross-site form post to /v1/jobs/repair", status=r.status_code)
        r = c.post(
            "/v1/search",
            content='{"text": "x", "filters": {"tags": ["\\udcff"]}}',
            headers={"Content-Type": "application/json"},
        )
        note("lone surrogate in filters.tags", status=r.status_code)
        try:
            docs = c.get("/docs").text
            note("/docs assets from a CDN", cdn_urls=docs.count("https://"))
        except httpx.HTTPError as exc:
            note("/docs assets from a CDN", error=f"{type(exc).__name__}: {exc}", alive=server.poll() is None)

        loop = root / "loop"
        loop.mkdir()
        (loop / "a").symlink_to(loop)
        (loop / "b").symlink_to(loop)  # two ways back in: the followed walk doubles per level
        r = c.post("/v1/jobs/index", json={"paths": [str(loop) + "/**"]})
        if r.status_code == 202:
            job, took = wait_job(c, r.json()["job_id"], 20)
            note("symlink loop under the root as a '**' glob", status=job["status"], seconds=round(took, 1))
            if job["status"] in ("queued", "running"):
                t0 = time.monotonic()
                c.delete(f"/v1/jobs/{job['job_id']}")
                job, _ = wait_job(c, job["job_id"], 15)
                note("... DELETE of it", status=job["status"], seconds=round(time.monotonic() - t0, 1))
        else:
            note("symlink loop under the root as a '**' glob", status=r.status_code)
        for p in (loop / "a", loop / "b"):
            p.unlink()
        loop.rmdir()

        for i in range(2):  # two 1 GiB files named as photos
            with open(root / f"big{i}.png", "wb") as f:
                f.truncate(1 << 30)
        before = rss_mib(server.pid)
        r = c.post("/v1/jobs/index", json={"paths": [str(root / "big0.png"), str(root / "big1.png")]})
        if r.status_code == 202:
            job, took = wait_job(c, r.json()["job_id"], 120)
            note(
                "two 1 GiB files",
                status=job["status"],
                seconds=round(took, 1),
                rss_growth_mib=round(rss_mib(server.pid) - before),
            )
        for i in range(2):
            (root / f"big{i}.png").unlink()

        odd = os.path.join(os.fsencode(root), b"z-caf\xe9.png")
        with open(odd, "wb") as f:
            f.write((root / f"scene-{DEMO_SEEDS[0]}.png").read_bytes() + b"\0")
        r = c.post("/v1/jobs/index", json={"paths": [str(root)]})
        job, _ = wait_job(c, r.json()["job_id"], 120) if r.status_code == 202 else ({}, 0)
        note(
            "a folder holding a non-UTF-8 file name",
            status=job.get("status"),
            indexed=(job.get("summary") or {}).get("indexed"),
            error=(job.get("error") or "")[:80] or None,
        )
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
