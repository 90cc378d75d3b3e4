"""segsearch: search inside photo libraries at the level of individual objects.

``from segsearch import Library`` is the Python API (``segsearch.library``). The core package
(settings, model registry, image decoding, masks, crops, stores, search, runtime) lives here; the
pipeline stages in ``segsearch.indexer`` (folder ``indexer/``), the query service in
``segsearch.api`` (``api/``) and the command line in ``segsearch.cli`` (``cli/``). Importing
segsearch imports no torch.
"""

__version__ = "0.1.0"
__all__ = ["Library", "__version__"]


def __getattr__(name: str):
    if name == "Library":  # lazily: `import segsearch` stays cheap for the CLI's --help
        from segsearch.library import Library

        return Library
    raise AttributeError(f"module 'segsearch' has no attribute {name!r}")
