"""``python tests/cli_with_tiny_models.py ARGS`` = ``segsearch ARGS`` with the tiny test models
registered (for tests that need a real separate process: SIGKILL, two indexers at once)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402,F401  (registers sam-test-tiny, clip-test-tiny)

from segsearch.cli import app  # noqa: E402

if __name__ == "__main__":
    app()
