"""Telling a transaction-mode pooler from PostgreSQL (project/pooler.py: pure decisions), and the
settings DATABASE_DIRECT_URL brings. The observations of a real PgBouncer:
tests/integration/test_pooler.py; Conveyor running behind one: tests/acceptance/test_pooler_live.py."""
from __future__ import annotations

import pytest
from django.test import override_settings

from project import pooler
from project.pooler import Observation

POSTGRES = Observation(first=10, second=10, during=10, other=11)


@pytest.mark.parametrize(
    ("seen", "pooled"),
    [
        (POSTGRES, False),  # a session keeps its backend, another session has its own
        (Observation(10, 10, 12, 10), True),  # the other took the released backend (most recent first)
        (Observation(10, 11, 10, 12), True),  # round-robin: the next statement on another backend
        (Observation(10, 10, 11, 12), True),  # moved while the other held a transaction
    ],
)
def test_a_pooler_is_seen_when_one_client_changes_backend_or_shares_one(seen, pooled):
    assert seen.pooled is pooled


def test_refusals_name_the_setting_to_change():
    pooled = Observation(10, 10, 12, 10)
    lossy = Observation(10, 10, 12, 10, prepared_kept=False)
    assert "set DATABASE_DIRECT_URL" in pooler.refusal(pooled, None, direct_set=False, prepared=False)
    assert pooler.refusal(pooled, POSTGRES, direct_set=True, prepared=False) is None
    assert pooler.refusal(pooled, pooled, direct_set=True, prepared=False).startswith("DATABASE_DIRECT_URL goes through")
    assert "set DATABASE_PREPARED=false" in pooler.refusal(lossy, POSTGRES, direct_set=True, prepared=True)
    assert pooler.refusal(lossy, POSTGRES, direct_set=True, prepared=False) is None
    assert pooler.refusal(Observation(10, 10, 12, 10, prepared_kept=True), POSTGRES, direct_set=True, prepared=True) is None
    # PostgreSQL itself, or nothing observed (unreachable): nothing to refuse
    assert pooler.refusal(POSTGRES, None, direct_set=False, prepared=True) is None
    assert pooler.refusal(None, None, direct_set=False, prepared=True) is None


def test_migrate_defaults_to_the_direct_connection_when_one_is_set():
    from project.management.commands.migrate import Command

    with override_settings(DATABASE_DIRECT_URL="postgresql://conveyor@db/conveyor"):
        assert Command().create_parser("manage.py", "migrate").parse_args([]).database == "direct"
    with override_settings(DATABASE_DIRECT_URL=""):
        assert Command().create_parser("manage.py", "migrate").parse_args([]).database == "default"


PARSED = {"HOST": "pgbouncer", "PORT": 6432, "NAME": "conveyor", "DISABLE_SERVER_SIDE_CURSORS": False, "OPTIONS": {}}
DATABASES = {
    "default": {**PARSED, "OPTIONS": {"application_name": "conveyor-web-7"}},
    "claims": {**PARSED, "OPTIONS": {"application_name": "conveyor-web-7", "options": "-c synchronous_commit=off"}},
}
DIRECT = {**PARSED, "HOST": "postgres", "PORT": 5432}


def test_a_direct_url_makes_the_pooled_connections_safe_for_transaction_pooling():
    # with DATABASE_DIRECT_URL: the direct alias is PostgreSQL, the pooled ones hold no cursor
    # across transactions and send no startup `options`
    pooled = pooler.databases(DATABASES, DIRECT, pooled=True)
    assert (pooled["direct"]["HOST"], pooled["direct"]["PORT"]) == ("postgres", 5432)
    assert pooled["direct"]["OPTIONS"] == {"application_name": "conveyor-web-7"}
    assert pooled["direct"]["TEST"] == {"MIRROR": "default"}
    assert (pooled["default"]["HOST"], pooled["claims"]["PORT"]) == ("pgbouncer", 6432)
    assert pooled["default"]["DISABLE_SERVER_SIDE_CURSORS"] is pooled["claims"]["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert pooled["claims"]["OPTIONS"] == {"application_name": "conveyor-web-7"}
    # without: as before, and the direct alias is DATABASE_URL's
    plain = pooler.databases(DATABASES, PARSED, pooled=False)
    assert plain["direct"]["HOST"] == "pgbouncer" and plain["default"]["DISABLE_SERVER_SIDE_CURSORS"] is False
    assert plain["claims"]["OPTIONS"]["options"] == "-c synchronous_commit=off"
    assert DATABASES["claims"]["OPTIONS"]["options"]  # the settings given are not changed



def test_a_claims_url_moves_only_the_claims_keeping_their_options():
    claims = {**PARSED, "NAME": "conveyor_claims", "OPTIONS": {}}
    moved = pooler.databases(DATABASES, DIRECT, pooled=True, claims=claims)
    assert (moved["claims"]["HOST"], moved["claims"]["PORT"], moved["claims"]["NAME"]) == ("pgbouncer", 6432, "conveyor_claims")
    assert moved["claims"]["OPTIONS"] == {"application_name": "conveyor-web-7"}  # the name kept, no startup options
    assert moved["claims"]["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert moved["default"]["NAME"] == "conveyor"
