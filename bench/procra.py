"""Procrastinate, the PostgreSQL-only job queue, as the benchmarks' third baseline.

Same PostgreSQL as Conveyor's (DATABASE_URL), its own tables (`procrastinate_*`, created by
`ensure_schema`), no Redis. Its worker is started as

    python -m procrastinate --app=bench.procra.app worker --queues bench --concurrency 1

(one process per Celery pool process of the other sides). Pinned in bench/requirements.txt;
when it is not installed, `available()` is false and the benchmark says so in its table.
"""
from __future__ import annotations

import os
from typing import Any

QUEUE = "bench"
TASK = "bench.procrastinate.noop"
READY = "Starting worker"  # its log line once it listens

try:
    import procrastinate
except ImportError:  # pragma: no cover - bench/requirements.txt not installed
    procrastinate = None  # type: ignore[assignment]


def available() -> bool:
    return procrastinate is not None


def _conninfo() -> str:
    return os.environ.get("DATABASE_URL", "")


app: Any = None
noop: Any = None
if procrastinate is not None:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=_conninfo()))

    @app.task(name=TASK, queue=QUEUE)
    def noop(i: int = 0) -> None:
        """The no-op job: its row's status is how the benchmark sees it done."""


def ensure_schema(conninfo: str) -> None:
    """Procrastinate's tables in this database, unless they are there already."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is None:
            conn.execute(app.schema_manager.get_schema())


def worker_argv(python: str) -> list[str]:
    return [python, "-m", "procrastinate", "--app=bench.procra.app", "--log-level", "info",
            "worker", "--queues", QUEUE, "--concurrency", "1"]
