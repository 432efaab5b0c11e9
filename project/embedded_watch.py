"""The embedded servers' watchdog: they stop once their last user is gone, however it ended.

Every process that starts or joins the embedded servers of a data folder (project/embedded.py)
is one of their users, and the last one to exit stops them (at exit). A user killed outright runs
no exit handler: `kill -9`, honcho's SIGKILL 5 s after Ctrl-C, the OOM killer. The servers then
outlived it, and pgserver kept the dead pid in its list of handles, so no later process ever saw
itself as the last one: PostgreSQL ran on after every later run of that folder.

One watchdog per data folder, started detached (its own session) by `embedded.start`, looks every
POLL_SECONDS: once no user is alive and no client is connected to either server for QUIET_SECONDS
(a worker whose supervisor was killed still drains, and hands its jobs back, over them:
jobs/engine/orphan.py), it stops both servers under the folder's lock, as the last user would
(Redis with SIGTERM, which saves; PostgreSQL with a fast shutdown), and exits. It exits as well
when the servers stopped otherwise (their last user's exit), or its folder went away.

Run as `python -m project.embedded_watch FOLDER`; it imports neither Django nor the settings.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

POLL_SECONDS = 0.5
#: How long nobody must use the servers before they are stopped.
QUIET_SECONDS = 2.0
PIDFILE = ".embedded-watch.pid"


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _pids(path: Path) -> list[int]:
    try:
        return [int(pid) for pid in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []


def user_lists(folder: Path) -> list[Path]:
    """The files naming the processes that hold a folder's servers (ours for Redis, pgserver's)."""
    return [folder / ".redis-users.json", folder / "postgres" / ".handle_pids.json"]


def live_users(folder: Path) -> list[int]:
    return sorted({pid for path in user_lists(folder) for pid in _pids(path) if _alive(pid)})


def prune(path: Path) -> list[int]:
    """Drop the dead pids from a list of users (call with the folder's lock held); the live ones."""
    if not path.exists():
        return []
    pids = _pids(path)
    alive = [pid for pid in pids if _alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))
    return alive


def redis_pid(folder: Path) -> int | None:
    try:
        registry = json.loads((folder / "redis.db.settings").read_text())
        pid = int(Path(registry["pidfile"]).read_text().strip())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if _alive(pid) else None


def postgres_pid(folder: Path) -> int | None:
    try:
        pid = int((folder / "postgres" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def clients(folder: Path) -> int:
    """Connections to either server but this process's own (a server that does not answer: 0)."""
    count = 0
    try:
        registry = json.loads((folder / "redis.db.settings").read_text())
        import redis

        client = redis.Redis(unix_socket_path=registry["unixsocket"], socket_timeout=2)
        try:
            count += max(0, int(client.info("clients")["connected_clients"]) - 1)
        finally:
            client.close()
    except Exception:
        pass
    postmaster = folder / "postgres" / "postmaster.pid"
    try:
        lines = postmaster.read_text().splitlines()
        socket_dir, port = lines[4], lines[3]
        import psycopg

        with psycopg.connect(host=socket_dir, port=port, user="postgres", dbname="postgres", connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                               "AND pid <> pg_backend_pid()").fetchone()
            count += int(row[0]) if row else 0
    except Exception:
        pass
    return count


def _stop(pid: int | None, sig: signal.Signals, seconds: float) -> None:
    if pid is None:
        return
    import psutil

    try:
        process = psutil.Process(pid)
        process.send_signal(sig)
        process.wait(seconds)
    except psutil.TimeoutExpired:
        process.kill()
    except psutil.Error:
        pass


def stop_servers(folder: Path) -> bool:
    """Stop the folder's servers unless a user came meanwhile (under the folder's lock, which
    a starting user takes too); whether they were stopped."""
    with open(folder / ".embedded.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if any(prune(path) for path in user_lists(folder)):
            return False
        _stop(redis_pid(folder), signal.SIGTERM, 15)  # Redis saves its append-only file and exits
        _stop(postgres_pid(folder), signal.SIGINT, 30)  # PostgreSQL's fast shutdown
        return True


def watch(folder: Path) -> None:
    quiet_since: float | None = None
    while True:
        if not folder.is_dir() or (redis_pid(folder) is None and postgres_pid(folder) is None):
            return  # stopped by their last user, or the folder is gone
        if live_users(folder) or clients(folder):  # (clients asked only once no user is alive)
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_SECONDS:
            if stop_servers(folder):
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} embedded servers of {folder} stopped: "
                      "their last user ended without stopping them", flush=True)
                return
            quiet_since = None
        time.sleep(POLL_SECONDS)


def main(argv: list[str]) -> int:
    folder = Path(argv[1]).resolve()
    try:
        watch(folder)
    finally:
        try:
            if (folder / PIDFILE).read_text().strip() == str(os.getpid()):
                (folder / PIDFILE).unlink()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
