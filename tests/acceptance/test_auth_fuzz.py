"""Schemathesis, every check, against the second document: /auth/openapi.json (POST /auth/token).
Valid and invalid bodies, wrong credentials and, for an email tried too often from one address,
429s (django-axes' lockout): every answer must be one the document names, in the shape it names.
The server hashes passwords cheaply (tests/fast_hash_settings.py): no part of the contract."""
from __future__ import annotations

import pytest

from tests.support import run_schemathesis

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

TIME_LIMIT = 180


def test_schemathesis_on_the_auth_document_finds_nothing(live, tmp_path):
    server = live.start("--no-beat", mode="server", name="fuzzed-auth", env={"DJANGO_SETTINGS_MODULE": "tests.fast_hash_settings"})
    run = run_schemathesis(server.url("/auth/openapi.json"), tmp_path, max_examples=60, time_limit=TIME_LIMIT)
    assert run.tested == 1, run.output[-2000:]
    assert run.generated >= 100, run.output[-2000:]
