"""Prefect tasks: one unit of work each (a shard, a batch); read via storage, call ganviews, write via storage."""
