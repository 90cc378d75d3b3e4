"""Stores: SQL records (``sql``, tables in ``schema``) and vectors (``vectors``: the interface;
``edge``: embedded Qdrant Edge; ``server``: qdrant-client)."""
