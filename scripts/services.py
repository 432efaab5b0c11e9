#!/usr/bin/env python3
"""Real PostgreSQL and Redis servers (Debian's packages) for a production-like run on one machine.

    python3 scripts/services.py start [DIR]     install what is missing, start both, print the URLs
    python3 scripts/services.py stop DIR        stop both, by the pids they wrote in DIR
    python3 scripts/services.py redis-stop DIR  stop Redis only (by pid); redis-start DIR starts it
                                                again on the same port and folder (append-only file)

`start` installs `postgresql` and `redis-server` with apt-get where their programs are missing,
makes a PostgreSQL cluster in DIR (a new temporary folder without one) owned by the `postgres`
user when run as root (PostgreSQL refuses to run as root), listening on 127.0.0.1 at a free port
and on a Unix socket in DIR, with a role and database `conveyor` whose password has characters
a URL must escape, and a `redis-server` on 127.0.0.1 at a free port (`--save "" --appendonly
yes`, its files in DIR). It prints `DATABASE_URL=...` and `REDIS_URL=...` (also in DIR/env) and
`SERVICES_DIR=DIR`. Standard library only: it runs before any virtualenv exists.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

PG_USER = "conveyor"
PG_DB = "conveyor"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("start", "stop", "redis-stop", "redis-start"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "start":
        folder = Path(rest[0]) if rest else Path(tempfile.mkdtemp(prefix="conveyor-services-"))
        urls = start(folder.resolve())
        for name, value in urls.items():
            print(f"{name}={value}")
        print(f"SERVICES_DIR={folder.resolve()}")
        return 0
    if not rest:
        print(f"{command}: name the folder `start` printed (SERVICES_DIR)", file=sys.stderr)
        return 2
    folder = Path(rest[0]).resolve()
    if command == "stop":
        stop_redis(folder)
        stop_postgres(folder)
    elif command == "redis-stop":
        stop_redis(folder)
    else:
        start_redis(folder, int((folder / "redis.port").read_text()))
    return 0


# --- Packages ---------------------------------------------------------------------------------


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's programs (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def install() -> None:
    missing = [package for package, present in (("postgresql", pg_bin()), ("redis-server", shutil.which("redis-server"))) if not present]
    if not missing:
        return
    apt = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        apt = ["sudo", "-n", *apt]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(apt, env=env).returncode != 0:
        subprocess.run([*apt[: apt.index("install")], "update"], env=env, check=True)
        subprocess.run(apt, env=env, check=True)


# --- Helpers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_owner(argv: list[str]) -> list[str]:
    """Run as `postgres` when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_pid(pid: int, signum: int, timeout: float = 30.0) -> None:
    if not alive(pid):
        return
    os.kill(pid, signum)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.05)


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- PostgreSQL ----------------------------------------------------------------------------------


def start(folder: Path) -> dict[str, str]:
    install()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the postgres user must reach its data and socket inside
    database_url = start_postgres(folder)
    redis_url = start_redis(folder, free_port())
    (folder / "env").write_text(f"DATABASE_URL={database_url}\nREDIS_URL={redis_url}\n")
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url}


def start_postgres(folder: Path) -> str:
    binaries = pg_bin()
    assert binaries, "PostgreSQL is not installed"
    data, port = folder / "pg", free_port()
    data.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(data, postgres.pw_uid, postgres.pw_gid)
        os.chown(folder, postgres.pw_uid, postgres.pw_gid)
    quiet = {"stdout": subprocess.DEVNULL}
    if subprocess.run(as_owner(["test", "-w", str(data)])).returncode != 0:
        sys.exit(f"services: {data} is out of the postgres user's reach (choose a folder under /tmp or /srv)")
    subprocess.run(as_owner([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                             "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"]), check=True, **quiet)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"), "-w",
                             "-o", options, "start"]), check=True, **quiet)
    password = "p@ss:w/rd#%?" + secrets.token_hex(8)  # every character a URL must escape
    literal = password.replace("'", "''")
    psql = [str(binaries / "psql"), "-h", str(folder), "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
    subprocess.run(as_owner([*psql, "-c", f"CREATE ROLE {PG_USER} LOGIN CREATEDB PASSWORD '{literal}'"]), check=True, **quiet)
    subprocess.run(as_owner([*psql, "-c", f"CREATE DATABASE {PG_DB} OWNER {PG_USER}"]), check=True, **quiet)
    (folder / "postgres.port").write_text(str(port))
    return f"postgresql://{PG_USER}:{quote(password, safe='')}@127.0.0.1:{port}/{PG_DB}"


def stop_postgres(folder: Path) -> None:
    pidfile = folder / "pg" / "postmaster.pid"
    if pidfile.exists():
        stop_pid(int(pidfile.read_text().split()[0]), signal.SIGINT)  # SIGINT: fast shutdown


# --- Redis ----------------------------------------------------------------------------------------


def start_redis(folder: Path, port: int) -> str:
    redis_dir = folder / "redis"
    redis_dir.mkdir(exist_ok=True)
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
                    "--dir", str(redis_dir), "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                    "--daemonize", "yes", "--pidfile", str(folder / "redis.pid"),
                    "--logfile", str(folder / "redis.log")], check=True)
    wait_port(port)
    (folder / "redis.port").write_text(str(port))
    return f"redis://127.0.0.1:{port}/0"


def stop_redis(folder: Path) -> None:
    pidfile = folder / "redis.pid"
    if pidfile.exists():
        stop_pid(int(pidfile.read_text().strip()), signal.SIGTERM)  # SIGTERM: rewrites nothing, exits
        pidfile.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
