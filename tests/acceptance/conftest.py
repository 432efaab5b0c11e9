"""Fixtures of the acceptance tests: an empty database of their own; Debian's chromium and
chromedriver, installed when missing."""
from __future__ import annotations

import uuid

import pytest
from django.db import connection

from tests import support
from tests.support import debian_tool


@pytest.fixture
def empty_database():
    """The URL of a new, empty database on the session's PostgreSQL; dropped afterwards."""
    name = f"cv_empty_{uuid.uuid4().hex[:12]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield support.test_database_url().rsplit("/", 1)[0] + f"/{name}"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless-capable Chromium (Debian's `chromium`; Playwright's own download cannot work here)."""
    return debian_tool("chromium", "chromium")


@pytest.fixture(scope="session")
def chromedriver(chromium: str) -> str:
    """Debian's chromedriver (the `chromium-driver` package, the same version as its chromium)."""
    return debian_tool("chromedriver", "chromium-driver")
