"""Configuration at boot: production refuses weak secrets and embedded services; the embedded
servers are started by the entry points (not by importing the settings), one pair per data folder,
shared by every process and kept across restarts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import MANAGE, ROOT, wait_for
from tests.unit.server_probe import server_traces

# Two different random values of 64 characters (production wants 50+, not equal, not a default).
COOKIE = "Qm9vN3kY2x7Zt0aB1cD4eF5gH6iJ7kL8mN9oP0qR1sT2uV3wX4yZ5aB6cD7eF8gH"
JWT = "LjYZmSlVSwLiTOrVB7gbj3ZkoTLd2DEM8usLN8XDhYuWW4Slx6EUk9RXSHOXZvyk"


def run_manage(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, MANAGE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def production_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        CONVEYOR_ENV="production",
        JWT_SECRET=JWT,
        COOKIE_SECRET=COOKIE,
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
        ({"JWT_SECRET": JWT[:49]}, "JWT_SECRET"),
        ({"JWT_SECRET": "changeme" * 7}, "JWT_SECRET"),
        ({"JWT_SECRET": "conveyor-development-secret-not-for-production-use"}, "JWT_SECRET"),
        ({"JWT_SECRET": "ab" * 30}, "JWT_SECRET"),
        ({"COOKIE_SECRET": None}, "COOKIE_SECRET"),
        ({"COOKIE_SECRET": "short"}, "COOKIE_SECRET"),
        ({"COOKIE_SECRET": COOKIE[:49]}, "COOKIE_SECRET"),
        ({"COOKIE_SECRET": "django-insecure-" + COOKIE}, "COOKIE_SECRET"),
        ({"COOKIE_SECRET": "CHANGEME-" + COOKIE}, "COOKIE_SECRET"),
        ({"COOKIE_SECRET": "conveyor-development-secret-not-for-production-use"}, "COOKIE_SECRET"),
        ({"COOKIE_SECRET": JWT}, "JWT_SECRET"),
        ({"DEBUG": "true"}, "DEBUG"),
        ({"DEBUG": "1"}, "DEBUG"),
        ({"FORWARDED_PROTO_HEADER": "X-Forwarded-Proto: https"}, "FORWARDED_PROTO_HEADER"),
        # a METRICS_TOKEN that is set must be a real secret (issue 22): 32+ characters, 5+ different
        ({"METRICS_TOKEN": "x"}, "METRICS_TOKEN"),
        ({"METRICS_TOKEN": "Ab3" * 10 + "c"}, "METRICS_TOKEN"),
        ({"METRICS_TOKEN": "ab" * 20}, "METRICS_TOKEN"),
        # the API-token hash key and the previous signing key follow the secrets' rules when set
        ({"TOKEN_HASH_KEY": "short"}, "TOKEN_HASH_KEY"),
        ({"JWT_PREVIOUS_SECRET": "changeme" * 7}, "JWT_PREVIOUS_SECRET"),
        ({"DATABASE_URL": None}, "DATABASE_URL"),
        ({"REDIS_URL": None}, "REDIS_URL"),
        # past a load balancer's usual 60 s idle timeout, negative, not a number
        ({"CONVEYOR_WAIT_MAX_SECONDS": "60"}, "CONVEYOR_WAIT_MAX_SECONDS"),
        ({"CONVEYOR_WAIT_MAX_SECONDS": "-1"}, "CONVEYOR_WAIT_MAX_SECONDS"),
        ({"CONVEYOR_WAIT_MAX_SECONDS": "nan"}, "CONVEYOR_WAIT_MAX_SECONDS"),
        ({"CONVEYOR_WAIT_MAX_SECONDS": "ten"}, "CONVEYOR_WAIT_MAX_SECONDS"),
        ({"CONVEYOR_WAITS_PER_TOKEN": "0"}, "CONVEYOR_WAITS_PER_TOKEN"),
        # a trace viewer's URL names where the trace id goes (issue 30)
        ({"TRACE_VIEWER_URL": "https://jaeger.example/trace/"}, "TRACE_VIEWER_URL"),
    ],
)
def test_production_refuses_to_boot_naming_the_variable(overrides, variable):
    result = run_manage("check", env=production_env(**overrides))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_production_with_everything_set_passes_the_checks():
    result = run_manage("check", "--deploy", "--fail-level", "ERROR", env=production_env())
    assert result.returncode == 0, result.stderr


def test_the_token_hash_key_defaults_to_jwt_secret_and_a_real_metrics_token_boots():
    # given production with a 32-character METRICS_TOKEN and no TOKEN_HASH_KEY (an upgrade)
    code = "from django.conf import settings as s; print('KEYS', s.TOKEN_HASH_KEY == s.JWT_SECRET, repr(s.JWT_PREVIOUS_SECRET))"
    out = run_manage("shell", "-c", code, env=production_env(METRICS_TOKEN=COOKIE[:32]))
    # then it boots, and API tokens are still keyed by JWT_SECRET, with no previous signing key
    assert out.returncode == 0, out.stderr
    assert "KEYS True ''" in out.stdout, out.stdout
    # and with TOKEN_HASH_KEY set, it is that value
    out = run_manage("shell", "-c", "from django.conf import settings as s; print('KEY', s.TOKEN_HASH_KEY[:8])",
                     env=production_env(TOKEN_HASH_KEY=COOKIE[::-1]))
    assert out.returncode == 0, out.stderr
    assert f"KEY {COOKIE[::-1][:8]}" in out.stdout, out.stdout


def test_equal_secrets_are_refused_naming_both():
    result = run_manage("check", env=production_env(COOKIE_SECRET=JWT))
    assert result.returncode == 2
    assert "COOKIE_SECRET and JWT_SECRET" in result.stderr and "Traceback" not in result.stderr


def test_the_development_values_still_boot_outside_production():
    # the same (development) value for both secrets, DEBUG on: development accepts them
    env = production_env(CONVEYOR_ENV="development", COOKIE_SECRET=None, JWT_SECRET=None, DEBUG="true")
    result = run_manage("check", env=env)
    assert result.returncode == 0, result.stderr


def test_production_deploy_checks_are_clean_even_at_warning_level():
    # given production's defaults (HSTS, secure cookies, redirect to https) behind a proxy ending TLS
    env = production_env(FORWARDED_PROTO_HEADER="X-Forwarded-Proto")
    # then Django's deploy checks find nothing, not even a warning
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout, result.stdout + result.stderr
    assert "WARNINGS" not in result.stdout + result.stderr
    # and the settings say what they are
    code = (
        "from django.conf import settings as s; print('SETTINGS', s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, "
        "s.SECURE_HSTS_PRELOAD, s.SECURE_SSL_REDIRECT, s.SECURE_REDIRECT_EXEMPT, s.SECURE_PROXY_SSL_HEADER, "
        "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.DEBUG, sep='|')"
    )
    out = run_manage("shell", "-c", code, env=env)
    line = next(line for line in out.stdout.splitlines() if line.startswith("SETTINGS"))
    assert line.split("|")[1:] == [
        "31536000", "True", "True", "True", "['^health/', '^metrics$']", "('HTTP_X_FORWARDED_PROTO', 'https')", "True", "True", "False"
    ], line
    # and each is configurable: a shorter HSTS without subdomains or preload, no redirect
    env.update(SECURE_HSTS_SECONDS="3600", SECURE_HSTS_INCLUDE_SUBDOMAINS="false", SECURE_HSTS_PRELOAD="false",
               SECURE_SSL_REDIRECT="false")
    env.pop("FORWARDED_PROTO_HEADER")
    out = run_manage("shell", "-c", code, env=env)
    line = next(line for line in out.stdout.splitlines() if line.startswith("SETTINGS"))
    assert line.split("|")[1:6] == ["3600", "False", "False", "False", "['^health/', '^metrics$']"], line
    assert line.split("|")[6] == "None", line


# A process of its own, as an entry point starts one: the embedded servers first, then Django.
PROBE = """
import django, os
from project import embedded
embedded.start()
django.setup()
from django.conf import settings
from django.db import connection
from django.core.cache import cache
with connection.cursor() as c:
    c.execute("SELECT pg_postmaster_start_time()::text")
    started = c.fetchone()[0]
    # Two probes at once: CREATE TABLE IF NOT EXISTS races on PostgreSQL's catalog, so one at a time.
    c.execute("SELECT pg_advisory_lock(4242)")
    c.execute("CREATE TABLE IF NOT EXISTS probe (v text)")
    c.execute("SELECT pg_advisory_unlock(4242)")
    if os.environ.get("PROBE_WRITE"):
        c.execute("INSERT INTO probe VALUES (%s)", [os.environ["PROBE_WRITE"]])
    c.execute("SELECT string_agg(v, ',' ORDER BY v) FROM probe")
    rows = c.fetchone()[0]
client = cache._cache.get_client(write=True)
if os.environ.get("PROBE_WRITE"):
    client.set("probe", os.environ["PROBE_WRITE"])
    client.save()
import time
if os.environ.get("PROBE_MEET"):  # both probes up before either goes on (and may end): a barrier of two files
    meet = os.environ["PROBE_MEET"]
    open(os.path.join(meet, os.environ["PROBE_WRITE"]), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(meet)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
print("RESULT", started, client.info()["process_id"], rows, (client.get("probe") or b"").decode(), sep="|", flush=True)
"""


def probe(folder: str, **extra: str) -> subprocess.Popen:
    env = {**embedded_env(folder), **extra}
    return subprocess.Popen([sys.executable, "-c", PROBE], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def end(processes: list[subprocess.Popen]) -> None:
    """Probes still running after a failure: stop them before their folder goes (they would make
    it again on exit, to count their release of its Redis)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def result_of(process: subprocess.Popen) -> list[str]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    line = next(line for line in out.splitlines() if line.startswith("RESULT"))
    return line.split("|")[1:]


def test_processes_on_one_data_folder_share_one_pair_of_servers_and_keep_data():
    folder = tempfile.mkdtemp(prefix="cvs-", dir="/tmp")
    meet = tempfile.mkdtemp(prefix="cvs-meet-", dir="/tmp")
    probes: list[subprocess.Popen] = []
    try:
        # given two processes started together on one data folder
        # (each waits for the other before it reads the server's pid and ends: they overlap for
        # sure, where a fixed 3 s hold each made it likely)
        probes += [probe(folder, PROBE_WRITE="a", PROBE_MEET=meet), probe(folder, PROBE_WRITE="b", PROBE_MEET=meet)]
        a, b = map(result_of, probes)
        # then they used one PostgreSQL (same start time) and one Redis (same server pid)
        assert a[0] == b[0] and a[1] == b[1], (a, b)
        # when both have exited, the servers stop; a new process starts them again
        probes.append(probe(folder))
        again = result_of(probes[-1])
        # then the data written before the restart is there
        assert again[1] != a[1], "a new Redis server should have started"
        assert again[2] == "a,b"
        assert again[3] in ("a", "b")
    finally:
        import shutil

        end(probes)
        _stop_leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(meet, ignore_errors=True)


# What each entry point's process then does with both servers.
USE_BOTH = (
    "from django.db import connection; from project.services import redis_client; c = connection.cursor(); "
    "c.execute('SELECT 41 + 1'); print('USED', c.fetchone()[0], redis_client().ping(), flush=True)"
)
ENTRY_POINTS = {
    "manage.py": [MANAGE, "shell", "-c", USE_BOTH],
    "wsgi": ["-c", "from project.wsgi import application\n" + USE_BOTH],
    # the servers' (gunicorn with uvicorn's worker class), with its pool of connections
    "asgi": ["-c", "from project.asgi import application\n" + USE_BOTH],
    # Celery's own command on the broker: it answers only if project/celery.py started Redis.
    "celery": ["-m", "celery", "-A", "project", "purge", "-f"],
}


def embedded_env(folder: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(CONVEYOR_DATA=folder, CONVEYOR_ENV="development", DJANGO_SETTINGS_MODULE="project.settings")
    return env


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_each_entry_point_starts_the_embedded_servers_and_they_stop_when_it_exits(entry):
    folder = tempfile.mkdtemp(prefix="cve-", dir="/tmp")
    try:
        # when an entry point runs with no DATABASE_URL / REDIS_URL, on an empty data folder
        out = subprocess.run(
            [sys.executable, *ENTRY_POINTS[entry]], cwd=ROOT, env=embedded_env(folder), capture_output=True, text=True, timeout=120
        )
        # then it used the servers it started
        assert out.returncode == 0, out.stderr[-3000:]
        if entry == "celery":
            assert "purged" in out.stdout.lower(), out.stdout + out.stderr[-2000:]
        else:
            assert "USED 42 True" in out.stdout, out.stdout + out.stderr[-2000:]
        # on the sockets the settings name, in the data folder (Redis removes its socket on exit)
        assert (
            f"embedded PostgreSQL (development only): postgresql://postgres@{folder.replace('/', '%2F')}%2Fpostgres/conveyor" in out.stderr
        )
        assert f"embedded Redis (development only): unix://{folder}/redis.sock" in out.stderr
        assert {"postgres", "redis.db.settings"} <= set(os.listdir(folder))
        # and they stopped when it exited, as its last holder
        wait_for(lambda: not server_traces(folder)["processes"], 20, interval=0.2, what=f"the servers of {folder} to stop")
    finally:
        import shutil

        _stop_leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_embedded_servers_stop_by_themselves_when_their_last_user_is_killed_outright():
    """A user killed with SIGKILL (`kill -9`, honcho 5 s after Ctrl-C) runs no exit handler: the
    servers outlived it, and pgserver kept its pid as a holder, so that no later process saw itself
    as the last one and PostgreSQL never stopped again. The folder's watchdog stops them."""
    folder = tempfile.mkdtemp(prefix="cvk-", dir="/tmp")
    try:
        # given a process that started the embedded servers and used them, then is killed outright
        kill = USE_BOTH + "; import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        out = subprocess.run([sys.executable, MANAGE, "shell", "-c", kill], cwd=ROOT, env=embedded_env(folder),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == -9 and "USED 42 True" in out.stdout, (out.returncode, out.stdout, out.stderr[-3000:])
        # then the servers stop by themselves (and their watchdog with them), within seconds
        wait_for(lambda: not server_traces(folder)["processes"], 30, interval=0.2,
                 what=f"the servers of {folder} to stop after their only user was killed")
        assert "stopped: their last user ended without stopping them" in (Path(folder) / "embedded-watch.log").read_text()
        # and the next user starts them again, is counted alone, and stops them at its exit
        done = subprocess.run([sys.executable, MANAGE, "shell", "-c", USE_BOTH], cwd=ROOT, env=embedded_env(folder),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "USED 42 True" in done.stdout, done.stderr[-3000:]
        wait_for(lambda: not server_traces(folder)["processes"], 30, interval=0.2, what=f"the servers of {folder} to stop")
    finally:
        import shutil

        _stop_leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)


SETUP_THEN_START = """
import json, os, django
django.setup()
from project import embedded
from tests.unit.server_probe import server_traces
folder = os.environ["CONVEYOR_DATA"]
before = server_traces(folder)
embedded.start()
print(json.dumps([before, server_traces(folder)]), flush=True)
"""


def test_setting_django_up_starts_nothing_until_start_is_called():
    folder = tempfile.mkdtemp(prefix="cvp-", dir="/tmp")
    try:
        out = subprocess.run(
            [sys.executable, "-c", SETUP_THEN_START], cwd=ROOT, env=embedded_env(folder), capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-3000:]
        before, after = json.loads(out.stdout.strip().splitlines()[-1])
        # then the probe of tests/unit/test_no_server_starts.py saw nothing after django.setup()
        assert (before["handles"], before["exported"], before["files"], before["processes"]) == ([], [], [], [])
        # and sees both servers once embedded.start() has run: handles, URLs, files and processes
        assert after["handles"] == ["database", "redis"]
        assert after["exported"] == ["DATABASE_URL", "REDIS_URL"]
        assert {"postgres", "redis.sock", ".redis-users.json"} <= set(after["files"])
        assert any(f"{folder}/postgres" in cmdline for cmdline in after["processes"]), after["processes"]
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


def test_start_refuses_a_bad_worker_cpu_policy_naming_the_variable():
    # given a worker whose WORKER_CPU_POLICY is not normal or idle
    result = run_manage("start", "--no-beat", env=production_env(WORKER_MODE="worker", WORKER_CPU_POLICY="lowest"))
    # then `manage.py start` stops at once with one line naming it, exit code 2, no traceback
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["conveyor: configuration error: WORKER_CPU_POLICY='lowest' must be one of normal, idle"], result.stderr
    assert "Traceback" not in result.stderr
