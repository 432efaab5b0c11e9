"""What Celery's workers answer (inspect stats and active_queues) as the operations page lists them."""
from __future__ import annotations

from jobs.interfaces.workers import LiveWorker, parse

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
