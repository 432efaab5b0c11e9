"""The engine: jobs and chains as rows, claimed, run, ended, retried, recovered, published.

It imports no interface (jobs.interfaces, api, project's HTTP assembly) and no event bus; the
import-linter contracts in pyproject.toml hold it to that. Application code imports the public API
from `jobs` (jobs/__init__.py), not from here.
"""
