"""A pytest plugin for tests/unit/test_no_server_starts.py (`-p tests.unit.server_probe`): at the end
of the session it writes, to the file named by SERVER_PROBE_REPORT, what would show that an
embedded server was started: this process's handles, the URLs it would have exported, the
server files in its data folder and the processes that name that folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# What a started PostgreSQL or Redis leaves in the data folder (see project/embedded.py).
SERVER_FILES = ("postgres", "redis.sock", "redis.db", "redis.db.settings", ".redis-users.json", "appendonly.aof")


def server_traces(folder: str) -> dict[str, object]:
    import psutil

    from project import embedded

    processes = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if folder and folder in cmdline and proc.info["pid"] != os.getpid():
            processes.append(cmdline)
    return {
        "handles": sorted(embedded._handles),
        "exported": sorted(v for v in ("DATABASE_URL", "REDIS_URL") if os.environ.get(v)),
        "files": sorted(name for name in SERVER_FILES if (Path(folder) / name).exists()),
        "processes": processes,
        "database_socket": str(embedded.database_socket_dir(Path(folder))),
    }


@pytest.hookimpl(tryfirst=True)  # before tests/conftest.py removes the session's data folder
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report = {
        "exitstatus": int(exitstatus),
        "data": os.environ.get("CONVEYOR_DATA", ""),
        **server_traces(os.environ.get("CONVEYOR_DATA", "")),
    }
    Path(os.environ["SERVER_PROBE_REPORT"]).write_text(json.dumps(report))
