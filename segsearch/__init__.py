"""segsearch core: settings, model registry, image decoding, mask bookkeeping and stores.

The pipeline stages live in ``segsearch.indexer`` (folder ``indexer/``) and the query
service in ``segsearch.api`` (folder ``api/``). Nothing here imports torch at import time.
"""

__version__ = "0.1.0"
