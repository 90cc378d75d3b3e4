"""The ``segsearch`` command line (typer), a thin layer over ``segsearch.Library``.

``app`` (``cli/app.py``) registers the commands: ``index``/``doctor`` (``cli/index.py``),
``search``/``info`` (``cli/search.py``), ``serve``/``demo`` (``cli/serve.py``) and ``models``
(``cli/models.py``). Heavy imports happen inside commands only, so ``segsearch --help`` is fast.
"""

from segsearch.cli.app import app

__all__ = ["app"]
