"""The query service (FastAPI): ``app`` (factory), ``deps``, ``schemas``, ``routes`` (search, records,
renders, segment), ``admin`` (jobs, info, doctor), ``jobs``, ``watch``, ``guard``, ``errors``."""
