"""A real PgBouncer (Debian's `pgbouncer`) in transaction mode in front of a test's or a bench's
PostgreSQL (tests/pgbouncer.py installs it where missing; bench/pooler.py).

`start(database)` writes its own ini in a folder of its own (pool_mode = transaction, a free loopback
port, trust authentication for the test's user, which the test's PostgreSQL also trusts) and starts
it; `PgBouncer.stop()` stops it by its pid. PgBouncer refuses to run as root: as root, it runs as
the owner of PostgreSQL's socket folder (the embedded server runs as `pgserver` under root), who may
connect there, or as `nobody` for a server on TCP.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote


INI = """\
[databases]
{name} = host={host} port={port} dbname={name} user={user}
{name}_claims = host={host} port={port} dbname={name} user={user} connect_query='SET synchronous_commit = off'

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
admin_users = {user}
pool_mode = {mode}
default_pool_size = {pool}
max_client_conn = 500
logfile = {folder}/pgbouncer.log
"""


@dataclass
class PgBouncer:
    process: subprocess.Popen
    port: int
    name: str
    user: str
    folder: Path

    def url(self, entry: str = "") -> str:
        """DATABASE_URL through the pooler; `claims_url()`: its entry `<name>_claims`, whose server
        connections commit asynchronously (DATABASE_CLAIMS_URL)."""
        return f"postgresql://{quote(self.user)}@127.0.0.1:{self.port}/{self.name}{entry}"

    def claims_url(self) -> str:
        return self.url("_claims")

    def params(self, **extra: Any) -> dict[str, Any]:
        """psycopg's keyword arguments for a client of the pooler."""
        return {"host": "127.0.0.1", "port": self.port, "dbname": self.name, "user": self.user, "connect_timeout": 5, **extra}

    def stats(self) -> dict[str, int]:
        """PgBouncer's own counters for the database (its admin console: SHOW STATS)."""
        import psycopg

        # The console takes no transaction and no extended protocol: simple queries, autocommit.
        # Both entries of the database counted; none before a client came (no pool, no row).
        counts = {"total_xact_count": 0, "total_query_count": 0}
        with psycopg.connect(**{**self.params(), "dbname": "pgbouncer"}, autocommit=True) as admin:
            cursor = psycopg.ClientCursor(admin)
            cursor.execute("SHOW STATS")
            names = [column.name for column in cursor.description]
            for row in cursor.fetchall():
                stat = dict(zip(names, row))
                if stat["database"] in (self.name, f"{self.name}_claims"):
                    for key, value in stat.items():
                        if key != "database":
                            counts[key] = counts.get(key, 0) + int(value)
        return counts

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (PgBouncer's immediate shutdown) to its pid, SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(database: dict[str, Any], mode: str = "transaction", pool: int = 20, binary: str | None = None) -> PgBouncer:
    """PgBouncer in `mode` in front of the database Django's `database` settings name (a Unix
    socket folder or a host), listening on a free loopback port; its files in a new folder under
    /tmp (which the user it runs as can reach), removed by `stop`."""
    binary = binary or shutil.which("pgbouncer")
    if not binary:
        raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-", dir="/tmp"))
    user = database["USER"] or "postgres"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    listen = free_port()
    ini = folder / "pgbouncer.ini"
    host = database["HOST"] or database.get("OPTIONS", {}).get("host") or "127.0.0.1"
    ini.write_text(INI.format(
        name=database["NAME"], host=host, port=database["PORT"] or 5432, user=user, listen=listen, folder=folder,
        mode=mode, pool=pool,
    ))
    as_user = None
    if os.geteuid() == 0:
        owner = Path(host).stat().st_uid if host.startswith("/") else 0
        as_user = owner or pwd.getpwnam("nobody").pw_uid
        for path in (folder, *folder.iterdir()):
            os.chown(path, as_user, -1)
    with open(folder / "pgbouncer.out", "wb") as out:
        process = subprocess.Popen(
            [binary, str(ini)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder,
            user=as_user, group=pwd.getpwuid(as_user).pw_gid if as_user is not None else None,
        )
    bouncer = PgBouncer(process, listen, database["NAME"], user, folder)

    def listening() -> bool:
        if process.poll() is not None:
            output = (folder / "pgbouncer.out").read_text(errors="replace")[-1000:]
            raise RuntimeError(f"pgbouncer exited with {process.returncode}:\n{bouncer.log()[-2000:]}\n{output}")
        return "listening on 127.0.0.1" in bouncer.log()

    deadline = time.monotonic() + 15
    while not listening():
        if time.monotonic() > deadline:
            bouncer.stop()
            raise RuntimeError(f"pgbouncer did not listen within 15 s:\n{bouncer.log()[-2000:]}")
        time.sleep(0.05)
    return bouncer
