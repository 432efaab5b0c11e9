"""What Celery's workers answer (inspect stats and active_queues) as the operations page lists them."""
from __future__ import annotations

import socket
import time

from celery import Celery

from jobs.interfaces.workers import LiveWorker, ask, parse

STATS = {
    "worker.1@host": {"pid": 10, "pool": {"implementation": "celery.concurrency.prefork:TaskPool", "max-concurrency": 2,
                                          "processes": [11, 12]}},
    "shared.2@host": {"pid": 20, "pool": {"implementation": "celery.concurrency.solo:TaskPool", "max-concurrency": 1}},
}
QUEUES = {
    "worker.1@host": [{"name": "images", "exchange": {}}, {"name": "default", "exchange": {}}],
    "shared.2@host": [{"name": "default"}],
    "late@host": [{"name": "emails"}],  # answered one question only
}


def test_each_worker_that_answered_with_its_sorted_queues_pool_and_processes():
    assert parse(STATS, QUEUES) == [
        LiveWorker("late@host", ["emails"], "?", None, []),
        LiveWorker("shared.2@host", ["default"], "solo", 1, []),
        LiveWorker("worker.1@host", ["default", "images"], "prefork", 2, [11, 12]),
    ]


def test_no_answer_is_no_worker():
    assert parse(None, None) == [] and parse({}, {}) == []


def test_a_broker_that_is_away_is_no_answer_at_once_not_after_the_publish_retries():
    # given a broker address nothing listens on (a loopback port just closed)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = Celery("away", broker=f"redis://127.0.0.1:{port}/0")
    # when the workers are asked through it
    began = time.monotonic()
    answer = ask(app=app)
    # then the page hears "could not ask" in well under the seconds a broadcast's retries take
    assert answer is None and time.monotonic() - began < 2
