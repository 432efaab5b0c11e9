"""Loaded with `-p tests.bootstrap` before pytest-django reads the settings.

Each test session gets its own data folder (short: Unix socket paths are limited to ~100
characters), so its embedded PostgreSQL and Redis are its own, even beside another session. They
are started only when a test needs them (tests/conftest.py); unit tests start none.
"""
from __future__ import annotations

import os
import tempfile

if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
    os.environ["CONVEYOR_DATA"] = tempfile.mkdtemp(prefix="cvt-", dir="/tmp")
os.environ["CONVEYOR_ENV"] = "test"
