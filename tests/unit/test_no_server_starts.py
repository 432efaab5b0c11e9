"""Unit tests start no server: importing the settings (and setting Django up) only computes the
embedded servers' URLs; the entry points and the tests that need a database or Redis start them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import ROOT

# What tests/unit/server_probe.py reports when no server was started or joined.
NOTHING_STARTED = {"handles": [], "exported": [], "files": [], "processes": []}

SETUP = """
import json, os, django
django.setup()
from django.conf import settings
from project import embedded
from tests.unit.server_probe import server_traces
folder = os.environ["CONVEYOR_DATA"]
print(json.dumps({
    "urls": [settings.DATABASE_URL, settings.REDIS_URL, settings.CELERY_BROKER_URL],
    "expected": [embedded.database_url(folder), embedded.redis_url(folder)],
    **server_traces(folder),
}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any server's URL: the embedded servers are the ones named."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CONVEYOR_DATA")}
    env.update(CONVEYOR_ENV="development", DJANGO_SETTINGS_MODULE="project.settings", **extra)
    return env


def traces(report: dict) -> dict:
    return {key: report[key] for key in NOTHING_STARTED}


def test_setting_django_up_starts_no_server_and_names_the_embedded_sockets():
    folder = tempfile.mkdtemp(prefix="cvu-", dir="/tmp")
    try:
        # when a fresh process on an empty data folder sets Django up and reads the settings
        out = subprocess.run(
            [sys.executable, "-c", SETUP], cwd=ROOT, env=clean_env(CONVEYOR_DATA=folder), capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout.strip().splitlines()[-1])
        # then no server was started or joined: no handle, no URL exported, nothing in the folder
        assert traces(report) == NOTHING_STARTED, report
        assert os.listdir(folder) == []
        # and the settings name the sockets the embedded servers will listen on, in that folder
        database, redis, broker = report["urls"]
        assert [database, redis] == report["expected"]
        assert database == f"postgresql://postgres@{folder.replace('/', '%2F')}%2Fpostgres/conveyor"
        assert redis == f"unix://{folder}/redis.sock" and broker == f"redis+socket://{folder}/redis.sock"
        assert "Traceback" not in out.stderr and "embedded" not in out.stderr
    finally:
        os.rmdir(folder)


def test_the_unit_tests_run_with_no_server_started(tmp_path: Path):
    # when the unit tests (all but this file) run in a session of their own, with no server URL set
    report_path = tmp_path / "report.json"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "tests/unit",
        "-q",
        "-p",
        "tests.unit.server_probe",
        "--ignore",
        "tests/unit/test_no_server_starts.py",
    ]
    out = subprocess.run(argv, cwd=ROOT, env=clean_env(SERVER_PROBE_REPORT=str(report_path)), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout, out.stdout[-3000:]
    report = json.loads(report_path.read_text())
    # then at their end, in the session's own data folder, no server had been started or joined
    assert os.path.basename(report["data"]).startswith("cvt-"), report  # made by tests/bootstrap.py
    assert traces(report) == NOTHING_STARTED, report
    # (and that folder is where the embedded PostgreSQL would have put its socket)
    assert report["database_socket"] == str(Path(report["data"]) / "postgres")
    # (that the probe sees servers where some run: tests/acceptance/test_configuration.py)


@pytest.mark.parametrize(
    ("argv0", "celery"),
    [
        ("/srv/conveyor/.venv/bin/celery", True),  # celery -A project worker
        ("/srv/conveyor/.venv/lib/python3.11/site-packages/celery/__main__.py", True),  # python -m celery
        ("/srv/conveyor/manage.py", False),  # starts the servers itself
        ("/srv/conveyor/.venv/lib/python3.11/site-packages/pytest/__main__.py", False),
        ("/srv/conveyor/.venv/bin/gunicorn", False),  # project/wsgi.py starts them
        ("-c", False),
        ("", False),
    ],
)
def test_only_a_celery_command_starts_the_servers_from_the_celery_app(argv0, celery):
    from project.celery import run_by_celery_command

    assert run_by_celery_command([argv0, "-A", "project", "worker"]) is celery
