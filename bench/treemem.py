"""Peak memory of a command together with every process it starts (Linux).

    python bench/treemem.py segsearch index photos/      # e.g. with SEGSEARCH_SAM_PROCESSES=2

`/usr/bin/time -v` reports the largest single process; an indexer with SAM worker processes is
several. This samples the command's process tree every 0.3 s and prints the peak of the summed
PSS (shared pages, such as SAM weights the workers share, counted once) and of the summed RSS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return seen


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB; zeros once it is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv)
    peak_pss = peak_rss = most = 0
    while proc.poll() is None:
        pids = descendants(proc.pid)
        mem = [memory_kib(p) for p in pids]
        most = max(most, len(pids))
        peak_pss = max(peak_pss, sum(m[0] for m in mem))
        peak_rss = max(peak_rss, sum(m[1] for m in mem))
        time.sleep(0.3)
    print(
        f"exit {proc.returncode}  wall {time.perf_counter() - t0:.1f} s  processes {most}  "
        f"peak PSS sum {peak_pss / 1024:.0f} MiB  peak RSS sum {peak_rss / 1024:.0f} MiB",
        file=sys.stderr,
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
