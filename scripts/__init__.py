"""Command-line scripts run from a checkout (`python scripts/hosts.py ...`); a package only so
that the import contracts (pyproject.toml) can name it."""
