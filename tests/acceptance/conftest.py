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


@pytest.fixture
def stop_together(live):
    """Drain for at most 5 s when a test stops its processes itself: after a few hundred jobs a
    prefork pool process may wait up to 30 s in billiard's Worker._ensure_messages_consumed before
    it exits (a Celery/billiard shutdown delay that none of these tests is about). At the end of a
    test the live fixture kills them all at once (LiveEnv.discard). Used by name:
    usefixtures("stop_together")."""
    live.grace = 5
    yield
