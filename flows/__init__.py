"""Prefect flows: plan shards, fan out, resume, report. Thin wiring over tasks."""
