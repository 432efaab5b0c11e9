"""`?wait=` under load, on a real `manage.py start` server (gunicorn, uvicorn's worker class, two
processes) and the test's real PostgreSQL: 200 open waits take no request slot and no database
connection each.

Before the fix (sync gunicorn workers, a connection per wait), six open `?wait=20` requests made
/health/live time out at 30 s: here 200 are open while /health/live and /api/types keep their
idle latency, each server process has at most its pool and one listening connection, and the
waits still answer at the end of their row (a cancel) and at their timeout.
"""
from __future__ import annotations

import json
import signal
import statistics
import threading
import time

import pytest
from django.db import connection

from jobs import enqueue
from jobs.engine import control
from jobs.models import Job, Status
from tests.factories import api_token
from tests.support import http_get, wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True, databases="__all__")]

WAITS = 200
TOKENS = 4  # 50 waits each: under the bound even were they all on one process
PER_TOKEN = 60
WAIT_SECONDS = 6
POOL = 4  # CONVEYOR_WEB_DB_POOL
SAMPLES = 40


def _latencies(url: str, headers: dict[str, str]) -> list[float]:
    times = []
    for _ in range(SAMPLES):
        started = time.monotonic()
        status, _ = http_get(url, timeout=30, headers=headers)
        times.append(time.monotonic() - started)
        assert status == 200
    return times


def _p(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _server_connections() -> dict[str, int]:
    """The server processes' PostgreSQL sessions, by application_name (conveyor-web-<pid>[-listen])."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name LIKE 'conveyor-web-%%' GROUP BY 1"
        )
        return dict(cursor.fetchall())


def _server_threads(root: int) -> int:
    """Threads of the instance's processes (the supervisor, gunicorn and its workers)."""
    import psutil

    total = 0
    for process in [psutil.Process(root), *psutil.Process(root).children(recursive=True)]:
        try:
            total += process.num_threads()
        except psutil.NoSuchProcess:
            pass
    return total


def _waited_keys() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted")
        return cursor.fetchone()[0]


def test_200_open_waits_leave_health_and_api_responsive_with_bounded_connections(live):
    server = live.start(
        "--no-beat", mode="server", name="waits",
        env={"CONVEYOR_WAITS_PER_TOKEN": str(PER_TOKEN), "CONVEYOR_WEB_DB_POOL": str(POOL)},
    )
    tokens = [{"Authorization": f"Bearer {api_token()}"} for _ in range(TOKENS)]
    types = server.url("/api/types")
    live_url = server.url("/health/live")

    # idle: both processes warm (a first request imports the API)
    for _ in range(4):
        http_get(types, timeout=30, headers=tokens[0])
    idle_health, idle_types = _latencies(live_url, {}), _latencies(types, tokens[0])

    # given 200 pending jobs (no worker here), each waited on over HTTP
    jobs = [enqueue("examples.ping", {}) for _ in range(WAITS)]
    answers: dict[int, tuple[int, dict, float]] = {}

    def wait_on(job: Job, headers: dict[str, str]) -> None:
        started = time.monotonic()
        status, body = http_get(server.url(f"/api/jobs/{job.pk}?wait={WAIT_SECONDS}"), timeout=60, headers=headers)
        answers[job.pk] = (status, json.loads(body), time.monotonic() - started)

    threads = [threading.Thread(target=wait_on, args=(job, tokens[n % TOKENS])) for n, job in enumerate(jobs)]
    opened = time.monotonic()
    for thread in threads:
        thread.start()
    # every wait is open: the listeners hold one shared lock per waited row
    wait_for(lambda: _waited_keys() >= WAITS, WAIT_SECONDS - 2, interval=0.05, what=f"{WAITS} waits to be open")
    open_after = time.monotonic() - opened

    # when /health/live and an ordinary authenticated GET are asked meanwhile
    loaded_health, loaded_types = _latencies(live_url, {}), _latencies(types, tokens[0])
    still_open = _waited_keys()
    sessions = _server_connections()
    threads_open = _server_threads(server.process.pid)

    # and half of the rows end (cancelled: an ending statement, NOTIFY to the waiters)
    ended = jobs[: WAITS // 2]
    cancelled_at = time.monotonic()
    for job in ended:
        assert control.cancel(job)
    for thread in threads:
        thread.join(60)

    report = (
        f"{WAITS} waits open in {open_after:.2f}s; /health/live p50/p99 idle {_p(idle_health, .5) * 1000:.1f}/"
        f"{_p(idle_health, .99) * 1000:.1f} ms, with the waits {_p(loaded_health, .5) * 1000:.1f}/"
        f"{_p(loaded_health, .99) * 1000:.1f} ms; /api/types idle {_p(idle_types, .5) * 1000:.1f}/"
        f"{_p(idle_types, .99) * 1000:.1f} ms, with the waits {_p(loaded_types, .5) * 1000:.1f}/"
        f"{_p(loaded_types, .99) * 1000:.1f} ms; server sessions {sessions}; threads of the servers' tree {threads_open}"
    )
    print(report)

    # then health and the API kept answering at about their idle latency
    assert still_open >= WAITS, f"the waits were not all open while measured ({still_open}): {report}"
    assert max(loaded_health) < 1.0 and max(loaded_types) < 1.0, report
    assert statistics.median(loaded_types) < max(0.25, 5 * statistics.median(idle_types)), report
    # and each server process holds at most its pool and one listening connection
    listeners = {name for name in sessions if name.endswith("-listen")}
    pools = {name: count for name, count in sessions.items() if not name.endswith("-listen")}
    assert 1 <= len(listeners) <= 2 and all(sessions[name] == 1 for name in listeners), report
    assert all(count <= POOL for count in pools.values()), report
    assert sum(sessions.values()) <= 2 * (POOL + 1), report
    # and no thread per open wait: the request's thread ended once its token was checked
    assert threads_open < WAITS // 2, report

    # and every wait answered: the ended rows at their end, the others at the timeout, as they are
    assert len(answers) == WAITS, f"{WAITS - len(answers)} waits never answered"
    for job in ended:
        status, body, _ = answers[job.pk]
        assert status == 200 and body["status"] == Status.CANCELLED, body
    for job in jobs[WAITS // 2:]:
        status, body, took = answers[job.pk]
        assert status == 200 and body["status"] == Status.PENDING, body
        assert WAIT_SECONDS - 0.1 <= took < WAIT_SECONDS + 3, took
    slowest_end = max(answers[job.pk][2] for job in ended) - (cancelled_at - opened)
    assert slowest_end < WAIT_SECONDS, "an ended row's waiter was answered only at its timeout"

    # and nothing is left held once they all answered
    wait_for(lambda: _waited_keys() == 0, 5, interval=0.05, what="the waiters' locks to be released")


def test_waits_over_the_per_token_bound_are_refused_with_429(live):
    server = live.start("--no-beat", mode="server", name="bounded", env={"CONVEYOR_WAITS_PER_TOKEN": "3"})
    headers = {"Authorization": f"Bearer {api_token()}"}
    job = enqueue("examples.ping", {})
    answers: list[tuple[int, bytes]] = []

    def wait_on() -> None:
        answers.append(http_get(server.url(f"/api/jobs/{job.pk}?wait=2"), timeout=30, headers=headers))

    # 7 waits of one token on 2 processes: one process has 4 of them, one more than its bound
    threads = [threading.Thread(target=wait_on) for _ in range(7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    refused = [body for status, body in answers if status == 429]
    assert refused and len(answers) == 7, answers
    assert "CONVEYOR_WAITS_PER_TOKEN" in json.loads(refused[0])["detail"], refused[0]
    assert all(json.loads(body)["status"] == "pending" for status, body in answers if status == 200)
    # without `wait`, the same token is never refused
    assert http_get(server.url(f"/api/jobs/{job.pk}"), timeout=10, headers=headers)[0] == 200


def test_a_draining_server_answers_its_open_waits_at_once(live):
    server = live.start("--no-beat", mode="server", name="drained")
    headers = {"Authorization": f"Bearer {api_token()}"}
    job = enqueue("examples.ping", {})
    answers: list[tuple[int, bytes, float]] = []

    def wait_on() -> None:
        started = time.monotonic()
        status, body = http_get(server.url(f"/api/jobs/{job.pk}?wait=8"), timeout=30, headers=headers)
        answers.append((status, body, time.monotonic() - started))

    thread = threading.Thread(target=wait_on)
    thread.start()
    wait_for(lambda: _waited_keys() >= 1, 5, interval=0.05, what="the wait to be open")

    # when the server is asked to stop (SIGTERM to `manage.py start`, which drains its children)
    stopping = time.monotonic()
    server.signal(signal.SIGTERM)
    thread.join(30)

    # then the wait is answered at once (the row as it is), not at its deadline, and the server exits
    assert answers, "the wait was never answered"
    status, body, took = answers[0]
    assert status == 200 and json.loads(body)["status"] == "pending", body
    assert time.monotonic() - stopping < 3.0, f"the draining server held the wait {took:.1f}s"
    assert server.stop(timeout=15) == 0
