"""Query service (FastAPI). Built in the query-service issue; it reuses ``segsearch.search``."""
