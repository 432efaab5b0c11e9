"""Hosts on one machine: Linux network namespaces on a bridge, each running Conveyor's processes.

    with Topology.up(folder) as net:        # the bridge, the namespaces, their veths
        data = net.start_data()             # PostgreSQL, Redis master + replica, two sentinels
        net.release()                       # migrate and sync schedules (from the server host)
        net.start_server(); net.start_worker("w1", ...)

Every name is `cvy-<pid>-...` (interfaces `cvy<pid><tag>`, 15 characters at most), the subnet
10.77.N.0/24 one no other interface of the machine uses, so runs side by side never clash. The
root namespace holds the bridge's address (.1): the harness, as a client, reaches the hosts
there; the hosts reach each other only by their own addresses (DATABASE_URL, REDIS_URL). Every
process is started with `ip netns exec <ns> ...` in a session of its own and stopped by its pid
(its process group at the end); `down` removes processes, namespaces, veths and the bridge, even
after a failure. `unavailable()` says in one line why this machine cannot (not root, no `ip`,
namespaces refused), for the suite to skip with.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
MANAGE = str(ROOT / "manage.py")
PG_PORT = 5432
REDIS_PORT, REPLICA_PORT = 6379, 6380
SENTINEL_PORTS = (26379, 26380)
MASTER_NAME = "conveyor"
HTTP_PORT = 8000
# Fast recovery, as tests/support.py's FAST: a lost worker's lease lapses in 3 s.
FAST = {
    "CONVEYOR_LEASE_SECONDS": "3",
    "CONVEYOR_RELAY_STALE_SECONDS": "3",
    "CONVEYOR_RECOVERY_INTERVAL_MS": "200",
    "CONVEYOR_BEAT_LOCK_SECONDS": "4",
}


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (one line), or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not shutil.which("ip"):
        return "no `ip` command (iproute2) to make network namespaces"
    probe = f"cvy-{os.getpid()}-probe"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add refused: {made.stderr.strip() or made.returncode}"
    run("ip", "netns", "del", probe, check=False)
    if not Path("/usr/lib/postgresql").exists() or not shutil.which("redis-server") or not shutil.which("redis-sentinel"):
        missing = "postgresql-15 redis-server redis-sentinel"
        if not shutil.which("apt-get"):
            return f"needs Debian's {missing}, and apt-get to install them"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "-q", "install", *missing.split()]
        if subprocess.run(apt, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "-q", "update"], env=env, capture_output=True)
            if subprocess.run(apt, env=env, capture_output=True).returncode != 0:
                return f"apt-get install {missing} failed"
    return None


def pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    assert versions, "PostgreSQL is not installed (apt-get install postgresql-15)"
    return versions[-1].parent


def free_subnet() -> int:
    """N of a 10.77.N.0/24 no interface of this machine has an address in (pid-based start)."""
    used = run("ip", "-4", "-o", "addr").stdout
    start = os.getpid() % 250
    for offset in range(250):
        n = (start + offset) % 250 + 1
        if f" 10.77.{n}." not in used:
            return n
    raise RuntimeError("no free 10.77.N.0/24 subnet")


@dataclass
class Proc:
    """One process started in a namespace, in a session (process group) of its own."""

    name: str
    host: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Signal the process, wait, then SIGKILL its process group (its children) by that pid."""
        if self.popen is None:
            return
        if self.alive():
            try:
                os.kill(self.pid, signum)
                self.popen.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the group is this process's session: ours only
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass


def stop_together(procs: list[Proc], timeout: float, log: Callable[[str], None] = print) -> None:
    """SIGTERM to every process first, so that their drains (2-4 s each) overlap, then each waited
    for within `timeout` in all and its group killed (Proc.stop, which signals only one still running)."""
    for proc in procs:
        try:
            proc.kill(signal.SIGTERM)
        except Exception as exc:
            log(f"hosts: stopping {proc.name}: {exc}")
    deadline = time.monotonic() + timeout
    for proc in procs:
        while proc.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            proc.stop(timeout=max(0.0, deadline - time.monotonic()))  # past the deadline: killed
        except Exception as exc:
            log(f"hosts: stopping {proc.name}: {exc}")


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    veth: str  # its root-namespace end, on the bridge: `ip link set <veth> down` cuts the host off


@dataclass
class Topology:
    folder: Path
    prefix: str = field(default_factory=lambda: f"cvy-{os.getpid()}")
    subnet: int = 0
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    pg_password: str = field(default_factory=lambda: "c@os/" + secrets.token_hex(6))
    log: Callable[[str], None] = print
    #: An OTLP/HTTP endpoint every Conveyor process exports its spans to (tracing on), or "".
    otlp_endpoint: str = ""

    # --- The network -------------------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"cvy{os.getpid()}br"[:15]

    def ip(self, last: int) -> str:
        return f"10.77.{self.subnet}.{last}"

    @classmethod
    def up(cls, folder: Path, names: tuple[str, ...] = ("data", "server", "w1", "w2"), log: Callable[[str], None] = print) -> "Topology":
        net = cls(folder=folder, log=log)
        try:
            net._build(names)
        except BaseException:
            net.down()
            raise
        return net

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _build(self, names: tuple[str, ...]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        self.subnet = free_subnet()
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.ip(1)}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for number, name in enumerate(names, start=2):
            ns = f"{self.prefix}-{name}"
            veth = f"cvy{os.getpid()}{name}"[:15]
            peer = f"cvy{os.getpid()}p{number}"[:15]
            run("ip", "netns", "add", ns)
            self.hosts[name] = Host(name, ns, self.ip(number), veth)
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
            run("ip", "link", "set", veth, "master", self.bridge)
            run("ip", "link", "set", veth, "up")
            run("ip", "link", "set", peer, "netns", ns)
            run("ip", "-n", ns, "link", "set", peer, "name", "eth0")
            run("ip", "-n", ns, "addr", "add", f"{self.ip(number)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        self.log(f"hosts: bridge {self.bridge} {self.ip(1)}/24; "
                 + ", ".join(f"{h.name} {h.ip} (netns {h.ns})" for h in self.hosts.values()))

    def cut(self, host: str) -> None:
        run("ip", "link", "set", self.hosts[host].veth, "down")

    def heal(self, host: str) -> None:
        run("ip", "link", "set", self.hosts[host].veth, "up")

    def down(self) -> None:
        """Stop every process, then remove namespaces, veths and the bridge. Conveyor's and Celery's
        processes (every host but `data`) first, all at once: SIGTERM to each, then each waited for
        (10 s in all) and its group killed; their drains overlap (one after another, 2-4 s each, they
        were most of a run's teardown). Then the data host's servers by pid, newest first (the
        processes above use them while they drain)."""
        stop_together([proc for proc in reversed(self.procs) if proc.host != "data"], 10, self.log)
        for proc in reversed(self.procs):
            if proc.host == "data":
                try:
                    proc.stop(timeout=10)
                except Exception as exc:
                    self.log(f"hosts: stopping {proc.name}: {exc}")
        for host in self.hosts.values():
            run("ip", "link", "del", host.veth, check=False)
            run("ip", "netns", "del", host.ns, check=False)
        run("ip", "link", "del", self.bridge, check=False)
        left = [h.ns for h in self.hosts.values() if h.ns in run("ip", "netns", "list", check=False).stdout]
        if left:
            self.log(f"hosts: namespaces left behind: {left}")

    # --- Processes ------------------------------------------------------------------------------

    def spawn(self, host: str, name: str, argv: list[str], env: dict[str, str] | None = None, user: str | None = None) -> Proc:
        prefix = ["ip", "netns", "exec", self.hosts[host].ns]
        if user:  # setpriv execs: the pid stays the program's
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        proc = Proc(name, host, [*prefix, *argv], {**os.environ, **(env or {})}, self.folder / f"{name}.log")
        self.procs.append(proc)
        self.start(proc)
        return proc

    def start(self, proc: Proc) -> None:
        """(Re)start a process of ours with its argv and environment."""
        with open(proc.log_path, "ab") as out:
            proc.popen = subprocess.Popen(proc.argv, cwd=ROOT, env=proc.env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_port(self, ip: str, port: int, timeout: float = 60, proc: Proc | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((ip, port), timeout=1):
                    return
            except OSError:
                if proc is not None and not proc.alive():
                    raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log()}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing listens on {ip}:{port} after {timeout}s" + (f":\n{proc.log()}" if proc else "")) from None
                time.sleep(0.1)

    # --- The data host: PostgreSQL, Redis master and replica, two sentinels ------------------------

    @property
    def data_ip(self) -> str:
        return self.hosts["data"].ip

    def database_url(self, host: str | None = None) -> str:
        return f"postgresql://conveyor:{quote(self.pg_password, safe='')}@{host or self.data_ip}:{PG_PORT}/conveyor"

    def redis_url(self) -> str:
        first, second = SENTINEL_PORTS
        return f"sentinel://{self.data_ip}:{first};sentinel://{self.data_ip}:{second}/0?master_name={MASTER_NAME}"

    def start_data(self) -> None:
        ip = self.data_ip
        pg = self.folder / "pg"
        sock = self.folder / "pgsock"
        for folder in (pg, sock):
            folder.mkdir()
            shutil.chown(folder, "postgres", "postgres")
        as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
        run(*as_pg, str(pg_bin() / "initdb"), "-D", str(pg), "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        with open(pg / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all 10.77.{self.subnet}.0/24 scram-sha-256\n")
        self.pg = self.spawn("data", "postgres", [str(pg_bin() / "postgres"), "-D", str(pg), "-p", str(PG_PORT),
                                                  "-k", str(sock), "-c", f"listen_addresses={ip}", "-c", "fsync=off",
                                                  "-c", "max_connections=300", "-c", "shared_buffers=64MB"], user="postgres")
        self.wait_port(ip, PG_PORT, proc=self.pg)
        literal = self.pg_password.replace("'", "''")
        psql = [*as_pg, str(pg_bin() / "psql"), "-h", str(sock), "-p", str(PG_PORT), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
        deadline = time.monotonic() + 30
        while run(*psql, "-c", "select 1", check=False).returncode != 0:  # the port opens before connections are accepted
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL does not answer:\n{self.pg.log()}")
            time.sleep(0.2)
        run(*psql, "-c", f"CREATE ROLE conveyor LOGIN CREATEDB PASSWORD '{literal}'")
        run(*psql, "-c", "CREATE DATABASE conveyor OWNER conveyor")
        self.redis_master = self._redis("redis-master", REDIS_PORT)
        self.redis_replica = self._redis("redis-replica", REPLICA_PORT, "--replicaof", ip, str(REDIS_PORT))
        self.sentinels = []
        for number, port in enumerate(SENTINEL_PORTS, start=1):
            config = self.folder / f"sentinel-{number}.conf"  # Sentinel rewrites it: one file each
            config.write_text("\n".join([
                f"port {port}", f"bind {ip}", "protected-mode no", "daemonize no", f"dir {self.folder}",
                f"sentinel monitor {MASTER_NAME} {ip} {REDIS_PORT} 1",
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                f"sentinel failover-timeout {MASTER_NAME} 5000", "",
            ]))
            self.sentinels.append(self.spawn("data", f"sentinel-{number}", ["redis-sentinel", str(config)]))
        for port, proc in zip(SENTINEL_PORTS, self.sentinels):
            self.wait_port(ip, port, proc=proc)
        self._wait_replica()

    def _redis(self, name: str, port: int, *extra: str) -> Proc:
        folder = self.folder / name
        folder.mkdir()
        proc = self.spawn("data", name, ["redis-server", "--port", str(port), "--bind", self.data_ip, "--protected-mode", "no",
                                         "--dir", str(folder), "--save", "", "--appendonly", "no", "--daemonize", "no", *extra])
        self.wait_port(self.data_ip, port, proc=proc)
        return proc

    def _wait_replica(self, timeout: float = 30) -> None:
        import redis

        client = redis.Redis(host=self.data_ip, port=REPLICA_PORT, socket_timeout=2)
        deadline = time.monotonic() + timeout
        while client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis replica never synced:\n{self.redis_replica.log()}")
            time.sleep(0.2)

    def restart_postgres(self) -> float:
        """Fast shutdown (SIGINT), then start again on the same data; returns seconds it was away."""
        began = time.monotonic()
        self.pg.stop(signal.SIGINT, timeout=30)
        self.start(self.pg)
        self.wait_port(self.data_ip, PG_PORT, proc=self.pg)
        return time.monotonic() - began

    def redis_master_address(self) -> tuple[str, int]:
        import redis

        for port in SENTINEL_PORTS:
            try:
                host, master_port = redis.Redis(host=self.data_ip, port=port, socket_timeout=2).execute_command(
                    "SENTINEL", "get-master-addr-by-name", MASTER_NAME)
                return host.decode(), int(master_port)
            except (redis.RedisError, OSError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    # --- Conveyor -----------------------------------------------------------------------------------

    def conveyor_env(self, host: str, **extra: str) -> dict[str, str]:
        data = self.folder / f"data-{host}"
        data.mkdir(exist_ok=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith(("WORKER_", "DJANGO_"))}
        env.update(FAST)
        env.update({
            "DATABASE_URL": self.database_url(), "REDIS_URL": self.redis_url(), "CONVEYOR_ENV": "test",
            "CONVEYOR_TEST_APPS": "hosts", "CONVEYOR_DATA": str(data), "CHAOS_HOST": host,
            "PYTHONUNBUFFERED": "1", "JWT_TTL_SECONDS": "7200", "LOGIN_FAILURE_LIMIT": "1000",
        })
        env = {key: value for key, value in env.items() if not key.startswith("OTEL_")}
        if self.otlp_endpoint:  # traced (project/tracing.py): each host names itself in its spans
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint, "OTEL_SERVICE_NAME": "chaos",
                        "OTEL_RESOURCE_ATTRIBUTES": f"host.name={host}", "OTEL_BSP_SCHEDULE_DELAY": "200"})
        env.update(extra)
        return env

    def manage(self, host: str, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> str:
        """`manage.py ARGS` run to its end in a host's namespace; its output."""
        done = subprocess.run(["ip", "netns", "exec", self.hosts[host].ns, sys.executable, MANAGE, *args], cwd=ROOT,
                              env={**self.conveyor_env(host), **(env or {})}, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            raise RuntimeError(f"manage.py {' '.join(args)} on {host} exited {done.returncode}:\n{output}")
        return done.stdout

    def release(self, host: str = "server") -> None:
        """`manage.py release` (migrate, sync schedules) from a host, before anything starts."""
        self.manage(host, "release")

    def start_server(self, wait: bool = True) -> Proc:
        """The HTTP server on the server host; `wait=False`: started, not waited for (then
        `wait_server`, after starting the workers: their start-ups overlap)."""
        ip = self.hosts["server"].ip
        proc = self.spawn("server", "server", [sys.executable, MANAGE, "start", "--port", str(HTTP_PORT), "--grace", "5",
                                               "--web-concurrency", "2"],
                          self.conveyor_env("server", WORKER_MODE="server", HOST=ip))
        return self.wait_server(proc) if wait else proc

    def wait_server(self, proc: Proc) -> Proc:
        self.wait_port(self.hosts["server"].ip, HTTP_PORT, timeout=90, proc=proc)
        return proc

    def start_worker(self, host: str, queues: str, pool: str, concurrency: int, name: str | None = None, **extra: str) -> Proc:
        name = name or f"worker-{host}"
        return self.spawn(host, name, [sys.executable, MANAGE, "start", "--queues", queues, "--pool", pool,
                                       "--concurrency", str(concurrency), "--grace", "5"],
                          self.conveyor_env(host, WORKER_MODE="worker", WORKER_ID=f"{name}@{self.prefix}", **extra))

    def start_beat(self, host: str) -> Proc:
        return self.spawn(host, f"beat-{host}", [sys.executable, "-m", "celery", "-A", "project", "beat", "--loglevel", "INFO"],
                          self.conveyor_env(host, WORKER_MODE="worker"))

    def wait_ready(self, proc: Proc, workers: int = 1, timeout: float = 90) -> None:
        """A worker start logs ` ready.` once its Celery worker consumes."""
        deadline = time.monotonic() + timeout
        while proc.log(10**7).count(" ready.") < workers:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} not ready after {timeout}s:\n{proc.log()}")
            time.sleep(0.2)
