"""``python tests/support/cli_with_tiny_models.py ARGS`` = ``segsearch ARGS`` with the tiny test models
registered (for tests that need a real separate process: SIGKILL, two indexers at once)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402,F401  (registers sam-test-tiny, clip-test-tiny)

from segsearch.cli import app  # noqa: E402

if __name__ == "__main__":
    import os

    delay = float(os.environ.get("SEGSEARCH_TEST_SECONDS_PER_IMAGE", "0"))
    if delay:  # make the tiny models as slow as real ones, so concurrent indexers overlap
        import time

        from segsearch.indexer.pipeline import Indexer

        prepare = Indexer.prepare

        def slow_prepare(self, *a, **kw):
            time.sleep(delay)
            return prepare(self, *a, **kw)

        Indexer.prepare = slow_prepare
    app()
