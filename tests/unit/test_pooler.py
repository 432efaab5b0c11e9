"""Telling a transaction-mode pooler from PostgreSQL (project/pooler.py: pure decisions), and the
settings DATABASE_DIRECT_URL brings. The observations of a real PgBouncer:
tests/integration/test_pooler.py; Conveyor running behind one: tests/acceptance/test_pooler_live.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.test import override_settings

from project import pooler
from project.pooler import Observation
from tests.support import ROOT

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


SHOW = """
from django.conf import settings
print(json.dumps({
    alias: {"host": d["HOST"], "port": d["PORT"], "cursors": d["DISABLE_SERVER_SIDE_CURSORS"], "options": d.get("OPTIONS", {})}
    for alias, d in settings.DATABASES.items()
} | {"prepared": settings.DATABASE_PREPARED}))
"""


def _settings(*variants: dict[str, str]) -> list[dict]:
    """The database settings a process gets from each variant's environment (one process each,
    started together), DATABASE_URL naming a pooler."""
    started = []
    for variables in variants:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
        env.update(DATABASE_URL="postgresql://conveyor@pgbouncer:6432/conveyor", DJANGO_SETTINGS_MODULE="project.settings", **variables)
        code = "import json, django; django.setup()\n" + SHOW
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        started.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, **pipes))
    seen = []
    for process in started:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        seen.append(json.loads(out))
    return seen


def test_a_direct_url_makes_the_pooled_connections_safe_for_transaction_pooling():
    direct = "postgresql://conveyor@postgres:5432/conveyor"
    pooled, asked, plain = _settings({"DATABASE_DIRECT_URL": direct}, {"DATABASE_DIRECT_URL": direct, "DATABASE_PREPARED": "true"}, {})
    # with DATABASE_DIRECT_URL: the direct alias is PostgreSQL, the pooled ones hold no cursor
    # across transactions, send no startup `options`, and prepare no statement unless asked
    assert (pooled["direct"]["host"], pooled["direct"]["port"]) == ("postgres", 5432)
    assert (pooled["default"]["host"], pooled["claims"]["port"]) == ("pgbouncer", 6432)
    assert pooled["default"]["cursors"] is pooled["claims"]["cursors"] is True
    assert "options" not in pooled["claims"]["options"]
    assert pooled["prepared"] is False and asked["prepared"] is True
    # without: as before (the direct alias is DATABASE_URL)
    assert plain["direct"]["host"] == "pgbouncer" and plain["default"]["cursors"] is False
    assert plain["claims"]["options"]["options"] == "-c synchronous_commit=off" and plain["prepared"] is True
