"""Stores: SQL records (``sql``) and vectors (``vectors``)."""
