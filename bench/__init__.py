"""Benchmarks, one command each, printing a table with ratios to bare Celery (`python -m bench.jobs`)."""
