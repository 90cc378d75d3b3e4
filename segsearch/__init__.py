"""segsearch: search inside photo libraries at the level of individual objects.

``from segsearch import Library`` is the Python API (``segsearch.library``). The core package
(settings, model registry, image decoding, masks, crops, stores, search, runtime) lives here; the
pipeline stages in ``segsearch.indexer`` (folder ``indexer/``), the query service in
``segsearch.api`` (``api/``) and the command line in ``segsearch.cli`` (``cli/``). Importing
segsearch imports no torch.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

# Run from a checkout (``python -m segsearch``, ``pytest``, a script beside the README), the
# source folder ``segsearch/`` comes first on sys.path and shadows an installed copy, whose
# ``segsearch.cli``/``.indexer``/``.api``/``.checkpoints``/``.migrations`` come from the sibling
# folders (pyproject's package-dir). Search the checkout root too, so those resolve to the sibling
# folders as they do installed or editable.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "indexer" / "__init__.py").is_file():
    __path__.append(str(_root))  # noqa: F821 (a package's __path__)
del _root, _Path
__all__ = ["Library", "__version__"]


def __getattr__(name: str):
    if name == "Library":  # lazily: `import segsearch` stays cheap for the CLI's --help
        from segsearch.library import Library

        return Library
    raise AttributeError(f"module 'segsearch' has no attribute {name!r}")
