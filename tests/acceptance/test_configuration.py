"""Configuration at boot: production refuses weak secrets and embedded services; the embedded
servers are one pair per data folder, shared by every process and kept across restarts."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import MANAGE, ROOT

STRONG = "s" * 40


def run_manage(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, MANAGE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def production_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        CONVEYOR_ENV="production",
        JWT_SECRET=STRONG,
        COOKIE_SECRET=STRONG,
        ALLOWED_HOSTS="conveyor.example.com",
        DATABASE_URL="postgresql://conveyor@127.0.0.1:1/conveyor",
        REDIS_URL="redis://127.0.0.1:1/0",
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"JWT_SECRET": None}, "JWT_SECRET"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET"),
        ({"COOKIE_SECRET": None}, "COOKIE_SECRET"),
        ({"COOKIE_SECRET": "short"}, "COOKIE_SECRET"),
        ({"DATABASE_URL": None}, "DATABASE_URL"),
        ({"REDIS_URL": None}, "REDIS_URL"),
    ],
)
def test_production_refuses_to_boot_naming_the_variable(overrides, variable):
    result = run_manage("check", env=production_env(**overrides))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_production_with_everything_set_passes_the_checks():
    result = run_manage("check", "--deploy", "--fail-level", "ERROR", env=production_env())
    assert result.returncode == 0, result.stderr


PROBE = """
import django, os
django.setup()
from django.conf import settings
from django.db import connection
from django.core.cache import cache
with connection.cursor() as c:
    c.execute("SELECT pg_postmaster_start_time()::text")
    started = c.fetchone()[0]
    c.execute("CREATE TABLE IF NOT EXISTS probe (v text)")
    if os.environ.get("PROBE_WRITE"):
        c.execute("INSERT INTO probe VALUES (%s)", [os.environ["PROBE_WRITE"]])
    c.execute("SELECT string_agg(v, ',' ORDER BY v) FROM probe")
    rows = c.fetchone()[0]
client = cache._cache.get_client(write=True)
if os.environ.get("PROBE_WRITE"):
    client.set("probe", os.environ["PROBE_WRITE"])
    client.save()
import time; time.sleep(float(os.environ.get("PROBE_HOLD", "0")))
print("RESULT", started, client.info()["process_id"], rows, (client.get("probe") or b"").decode(), sep="|", flush=True)
"""


def probe(folder: str, **extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(CONVEYOR_DATA=folder, CONVEYOR_ENV="development", DJANGO_SETTINGS_MODULE="project.settings", **extra)
    return subprocess.Popen([sys.executable, "-c", PROBE], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_of(process: subprocess.Popen) -> list[str]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    line = next(line for line in out.splitlines() if line.startswith("RESULT"))
    return line.split("|")[1:]


def test_processes_on_one_data_folder_share_one_pair_of_servers_and_keep_data():
    folder = tempfile.mkdtemp(prefix="cvs-", dir="/tmp")
    try:
        # given two processes started together on one data folder
        first = probe(folder, PROBE_WRITE="a", PROBE_HOLD="3")
        second = probe(folder, PROBE_WRITE="b", PROBE_HOLD="3")
        a, b = result_of(first), result_of(second)
        # then they used one PostgreSQL (same start time) and one Redis (same server pid)
        assert a[0] == b[0] and a[1] == b[1], (a, b)
        # when both have exited, the servers stop; a new process starts them again
        again = result_of(probe(folder))
        # then the data written before the restart is there
        assert again[1] != a[1], "a new Redis server should have started"
        assert again[2] == "a,b"
        assert again[3] in ("a", "b")
    finally:
        import shutil

        _stop_leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _stop_leftovers(folder: str) -> None:
    """Servers of that folder still running after a failure: stop them before removing it."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if folder in cmdline:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
    postmaster = Path(folder) / "postgres" / "postmaster.pid"
    if postmaster.exists():
        try:
            os.kill(int(postmaster.read_text().split()[0]), 15)
        except (ProcessLookupError, ValueError):
            pass
