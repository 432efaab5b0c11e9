"""The release step (`manage.py release`) and the rule that nothing else migrates.

Real processes on fresh, empty databases made on the session's PostgreSQL (dropped after): two
replicas' release steps started at the same moment take turns under the advisory lock and
migrate once; a server or worker refuses to start with migrations pending, and starts once the
release step has run."""
from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from tests.support import MANAGE, ROOT, Proc, free_port, http_ok, start_servers, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

COOKIE = "Qm9vN3kY2x7Zt0aB1cD4eF5gH6iJ7kL8mN9oP0qR1sT2uV3wX4yZ5aB6cD7eF8gH"
JWT = "LjYZmSlVSwLiTOrVB7gbj3ZkoTLd2DEM8usLN8XDhYuWW4Slx6EUk9RXSHOXZvyk"


def process_env(database_url: str, production: bool, **extra: str) -> dict[str, str]:
    """A process on `database_url` and the session's Redis; in production with its secrets."""
    start_servers()
    env = {k: v for k, v in os.environ.items() if k != "WORKER_QUEUES"}  # CONVEYOR_DATA kept: the session's folder
    env.update(DATABASE_URL=database_url, REDIS_URL=settings.REDIS_URL, DJANGO_SETTINGS_MODULE="project.settings")
    if production:
        env.update(CONVEYOR_ENV="production", COOKIE_SECRET=COOKIE, JWT_SECRET=JWT, ALLOWED_HOSTS="127.0.0.1")
    else:
        env.update(CONVEYOR_ENV="development")
    env.update(extra)
    return env


def applied(database_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        return [tuple(row) for row in conn.execute("SELECT app, name FROM django_migrations ORDER BY id")]


def migrations_on_disk() -> set[tuple[str, str]]:
    from django.db.migrations.loader import MigrationLoader

    return set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)


def test_two_release_steps_at_once_both_succeed_and_migrate_once(empty_database):
    # given two replicas' release steps, in production (with every app of this test session, the
    # demo's too), started at the same moment on an empty database
    env = process_env(empty_database, production=True, CONVEYOR_DEMO="true")
    argv = [sys.executable, MANAGE, "release"]
    replicas = [
        subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    try:
        outputs = [replica.communicate(timeout=240) for replica in replicas]
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.kill()
                replica.wait(10)

    # then both exit 0
    for replica, (out, err) in zip(replicas, outputs):
        assert replica.returncode == 0, err[-3000:]
    # and one of them waited for the lock the other held, then found nothing left to apply
    waited = [i for i, (out, err) in enumerate(outputs) if "another release holds the lock" in err]
    assert len(waited) == 1, [err for out, err in outputs]
    first, second = outputs[1 - waited[0]], outputs[waited[0]]
    assert "another release holds the lock" not in first[1]
    assert "No migrations to apply." in second[0], second[0]
    # and it took the lock only once the first had recorded its last migration
    took_at = dt.datetime.fromisoformat(re.search(r"lock taken after [0-9.]+s \(at ([^)]+)\)", second[1]).group(1)).timestamp()
    with psycopg.connect(empty_database) as conn:
        last_applied = conn.execute("SELECT extract(epoch FROM max(applied)) FROM django_migrations").fetchone()[0]
    assert took_at >= float(last_applied), (took_at, last_applied)
    # and every migration was applied once, by the first: one row each in django_migrations
    rows = applied(empty_database)
    assert len(rows) == len(set(rows)), rows
    assert set(rows) == migrations_on_disk()
    applying = re.findall(r"Applying (\S+?)\.\.\. OK$", first[0] + second[0], re.MULTILINE)
    assert len(applying) == len(rows) == len(set(applying)), applying
    # and both synced the schedules after migrating
    for out, err in outputs:
        assert "schedules:" in out, out
        assert out.index("schedules:") > out.index("Operations to perform")
        assert "release: done; lock released" in err
    # and the lock is free again
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0] == 0


def refused(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    started = time.monotonic()
    out = subprocess.run([sys.executable, MANAGE, "start", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60
    return out


def assert_refused_naming_release(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip() and "embedded" not in line]
    assert len(lines) == 1, out.stderr
    assert "manage.py release" in lines[0] and "not applied" in lines[0], lines[0]
    assert "Traceback" not in out.stderr
    # nothing started: no instance announced, no child's output
    assert "instance(s)" not in out.stdout, out.stdout
    assert "gunicorn" not in out.stderr.lower() and "celery" not in out.stderr.lower(), out.stderr


def test_a_server_or_worker_with_migrations_pending_refuses_to_start_until_the_release_step(empty_database):
    dev = process_env(empty_database, production=False)
    # when a development server and a production worker start on a database with no migrations
    port = free_port()
    assert_refused_naming_release(refused({**dev, "WORKER_MODE": "server"}, "--port", str(port)))
    assert_refused_naming_release(refused(process_env(empty_database, production=True, WORKER_MODE="worker")))
    # then nothing migrated on the way
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0

    # when the release step has run, the same server starts and is ready
    release = subprocess.run([sys.executable, MANAGE, "release"], cwd=ROOT, env=dev, capture_output=True, text=True, timeout=180)
    assert release.returncode == 0, release.stderr[-3000:]
    log_path = Path(os.environ.get("CONVEYOR_DATA") or "/tmp") / f"release-server-{port}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, MANAGE, "start", "--port", str(port), "--grace", "5"],
            cwd=ROOT, env={**dev, "WORKER_MODE": "server"}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Proc("release-server", process, log_path, port)
    try:
        def ready() -> bool:
            assert server.alive(), server.log()[-3000:]
            return http_ok(server.url("/health/ready"))

        wait_for(ready, 60, interval=0.3, what="the server to be ready after the release step")
        assert "not applied" not in server.log()
    finally:
        assert server.stop(timeout=30) == 0


def test_the_procfile_and_make_run_use_the_release_step():
    lines = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ":" in line)
    assert lines["release"].strip() == "python manage.py release"
    run = (ROOT / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "manage.py release" in run and "migrate" not in run, run
    assert run.index("manage.py release") < run.index("manage.py start"), run
