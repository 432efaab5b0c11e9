"""What the benchmarks share: processes, embedded servers, Django, Redis, cleanup, the table.

Every benchmark (`python -m bench.jobs`, `python -m bench.cluster`) runs as a `session`: a fresh
folder under /tmp, Django migrated on this run's database (embedded PostgreSQL and Redis in that
folder unless DATABASE_URL / REDIS_URL are set), the processes it spawns each the leader of its
own process group, and at the end, even on failure or SIGTERM, every process stopped, the
embedded servers stopped, and only then the folder removed.
"""
from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
MANAGE = str(ROOT / "manage.py")

POLL = 0.05  # seconds between completion checks


class BenchError(RuntimeError):
    pass


# --- Processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Procs:
    """Every process the benchmark starts, each the leader of its own process group."""

    folder: Path
    procs: list[Proc] = field(default_factory=list)  # running
    started: list[Proc] = field(default_factory=list)  # all, for their logs

    def spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> Proc:
        """`cwd`: the tree whose code the process imports (bench.ab starts another revision's)."""
        log_path = self.folder / f"{name}.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        proc = Proc(name, process, log_path)
        self.procs.append(proc)
        self.started.append(proc)
        return proc

    def wait_ready(self, proc: Proc, timeout: float = 90.0, marker: str = " ready.") -> None:
        """A Celery worker logs `... ready.` once it consumes (other workers: their own `marker`)."""
        deadline = time.monotonic() + timeout
        while marker not in proc.log():
            if not proc.alive():
                raise BenchError(f"{proc.name} exited with {proc.process.returncode}:\n{tail(proc.log())}")
            if time.monotonic() > deadline:
                raise BenchError(f"{proc.name} not ready after {timeout:.0f}s:\n{tail(proc.log())}")
            time.sleep(0.1)

    def stop(self, *procs: Proc, grace: float = 20.0) -> None:
        """SIGTERM each leader (a warm shutdown), then SIGKILL whatever is left of its tree.

        `manage.py start` runs each child in a session of its own, so the tree is found by
        descent (before and after the grace period), and each member's process group is killed.
        """
        tree = {proc.name: _descendants(proc.process.pid) for proc in procs}
        for proc in procs:
            if proc.alive():
                proc.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(proc.alive() for proc in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in procs:
            members = [*tree[proc.name], *_descendants(proc.process.pid)]
            _kill_group(proc.process.pid)
            for member in members:
                try:
                    if member.is_running():
                        _kill_group(os.getpgid(member.pid))
                        member.kill()
                except Exception:
                    pass
            try:
                proc.process.wait(10)
            except subprocess.TimeoutExpired:
                print(f"bench: warning: {proc.name} (pid {proc.process.pid}) did not exit", file=sys.stderr)
            if proc in self.procs:
                self.procs.remove(proc)

    def stop_all(self) -> None:
        self.stop(*self.procs, grace=10.0)


def _kill_group(pgid: int) -> None:
    if pgid == os.getpgid(0):
        return  # never our own group
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the benchmark dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, procs: list[Proc] = ()) -> float:
    """Poll until true; return time.perf_counter() when it was seen true. Bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        for proc in procs:
            if not proc.alive():
                raise BenchError(f"{proc.name} died while waiting for {what}:\n{tail(proc.log())}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)


# --- Where the CPU goes: client, workers, PostgreSQL, Redis ----------------------------------------


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu(pid: int) -> float:
    """CPU seconds used by a process, its live descendants and the children they reaped."""
    import psutil

    total = 0.0
    for process in _tree(pid):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its descendants, in bytes."""
    import psutil

    total = 0
    for process in _tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total


_postmaster: int | None = -1


def postmaster_pid() -> int | None:
    """The PostgreSQL server's pid when it runs on this machine (our backend's parent), else None."""
    global _postmaster
    if _postmaster == -1:
        import psutil
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
        try:
            _postmaster = psutil.Process(backend).ppid()
        except psutil.Error:
            _postmaster = None  # another machine (or a container): its CPU is not ours to read
    return _postmaster


def redis_cpu() -> float:
    """CPU seconds the Redis server has used (its own INFO: works for a remote one too)."""
    info = redis_client().info("cpu")
    return sum(float(info.get(key, 0.0)) for key in ("used_cpu_sys", "used_cpu_user", "used_cpu_sys_children", "used_cpu_user_children"))


SIDES = ("client", "workers", "PostgreSQL", "Redis")


@dataclass
class Cpu:
    """CPU seconds per side over one measured run (client: the publishing process, publish only)."""

    client: float = 0.0
    workers: float = 0.0
    postgres: float | None = 0.0
    redis: float = 0.0

    def per_item_ms(self, n: int) -> str:
        """`0.27 / 0.57 / 0.00 / 0.07`: ms of CPU per job on each side."""
        pg = "-" if self.postgres is None else f"{self.postgres * 1000 / n:.2f}"
        return f"{self.client * 1000 / n:.2f} / {self.workers * 1000 / n:.2f} / {pg} / {self.redis * 1000 / n:.2f}"


class CpuMeter:
    """`start()` before the first publish, `published()` after the last, `stop()` when all is done."""

    def __init__(self, workers: list[Proc]) -> None:
        self.pids = [proc.process.pid for proc in workers]

    def _servers(self) -> tuple[float, float | None, float]:
        workers = sum(tree_cpu(pid) for pid in self.pids)
        postmaster = postmaster_pid()
        return workers, (tree_cpu(postmaster) if postmaster else None), redis_cpu()

    def start(self) -> None:
        self.client0 = time.process_time()
        self.client = 0.0
        self.servers0 = self._servers()

    def published(self) -> None:
        self.client = time.process_time() - self.client0

    def stop(self) -> Cpu:
        workers, postgres, redis = self._servers()
        w0, p0, r0 = self.servers0
        return Cpu(self.client, workers - w0, None if postgres is None or p0 is None else postgres - p0, redis - r0)


# --- Setup --------------------------------------------------------------------------------------


def setup_django(folder: Path) -> None:
    """Django on this run's database (embedded under `folder` unless configured), migrated."""
    # A fresh data folder: the embedded servers of this run only, if any (short: Unix socket
    # paths), and the supervisors' state files.
    os.environ["CONVEYOR_DATA"] = str(folder / "data")
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    # The benchmarks' own subscribers (bench.fanout-*), here and in every process started from here.
    os.environ["CONVEYOR_BENCH"] = "true"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    from project import embedded

    embedded.start()  # as manage.py does: settings only name the embedded servers' sockets
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def embedded_servers() -> list[Any]:
    """The embedded server processes (psutil) of this run, to be sure they are gone at the end."""
    import psutil

    from project import embedded

    servers = []
    redis_server = embedded._handles.get("redis")
    if redis_server is not None and getattr(redis_server, "pid", None):
        try:
            servers.append(psutil.Process(int(redis_server.pid)))
        except psutil.Error:
            pass
    info = getattr(embedded._handles.get("database"), "_postmaster_info", None)
    if info is not None:
        servers.append(info.process)
    return servers


def bare_config() -> dict[str, Any]:
    """Conveyor's Celery settings (CELERY_* in Django settings) as a plain Celery config."""
    from django.conf import settings

    config = {}
    for name in dir(settings):
        if name.startswith("CELERY_"):
            key = name[len("CELERY_") :].lower()
            if key.startswith("beat_") or key == "visibility_timeout":  # beat's; Conveyor's own
                continue
            config[key] = getattr(settings, name)
    return config


def bare_defaults_config() -> dict[str, Any]:
    """Celery's own defaults, only pointed at the same broker: what a user would run instead."""
    from django.conf import settings

    config: dict[str, Any] = {"broker_url": settings.CELERY_BROKER_URL}
    if getattr(settings, "CELERY_BROKER_USE_SSL", None):
        config["broker_use_ssl"] = settings.CELERY_BROKER_USE_SSL
    return config


def truncate_jobs() -> None:
    """Empty the jobs tables. Ids go on from where they were: a message left over from an earlier
    phase can never name a row of a later one."""
    from django.db import connection

    from jobs.models import Chain, Job

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Job._meta.db_table}, {Chain._meta.db_table} CASCADE")


def queue_length(queue: str) -> int:
    """Messages waiting in a Celery queue on Redis, over its priority lists (`q`, `q:1`, ...)."""
    from django.conf import settings

    sep = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("sep", "\x06\x16")
    steps = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("priority_steps", [0])
    pipe = redis_client().pipeline(transaction=False)
    for step in steps:
        pipe.llen(queue if not step else f"{queue}{sep}{step}")
    return sum(pipe.execute())


_redis: Any = None


def redis_client() -> Any:
    """This process's one Redis client (closed before the embedded Redis is stopped)."""
    global _redis
    if _redis is None:
        from django.conf import settings

        from project.connections import redis_client

        _redis = redis_client(settings.REDIS_URL)
    return _redis


def child_env(**extra: str) -> dict[str, str]:
    from django.conf import settings

    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}
    for name in ("WORKER_QUEUES", "WORKER_CONCURRENCY", "WORKER_ID", "WORKER_CPU_POLICY"):
        env.pop(name, None)
    env["LOG_LEVEL"] = "INFO"
    env.update(extra)
    return env


# --- Report -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """The benchmarks' table: a label column, right-aligned figures, a free last column (a verdict)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    last = len(header) - 1

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(widths[i]) for i, cell in enumerate(row[1:last], 1)] + [row[last]]
        return "  ".join(cells).rstrip()

    return [line(header), "  ".join("-" * w for w in widths[:last]), *map(line, rows)]


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def server_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        return cursor.fetchone()[0].split()[0]


def context() -> str:
    """The machine and the servers: `2 CPUs, Python 3.11.7, embedded PostgreSQL 16.2, ...`."""
    from project import embedded

    return (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{'embedded ' if embedded.is_embedded('database') else ''}PostgreSQL {server_version()}, "
        f"{'embedded ' if embedded.is_embedded('redis') else ''}Redis {redis_client().info('server')['redis_version']}"
    )


# --- Session ------------------------------------------------------------------------------------


def on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: workers and servers are stopped


def session(prog: str, body: Callable[[Procs], str]) -> int:
    """Run one benchmark: set up, `body(procs)` (its report, printed), clean up whatever happens.

    `prog` prefixes the progress lines (`bench.jobs: ...`). Exit code 0, 1 on a BenchError (with
    the last lines of every process's log), 130 on Ctrl-C; SIGTERM and SIGHUP clean up too.
    """
    folder = Path(tempfile.mkdtemp(prefix="cvb-", dir="/tmp"))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    procs = Procs(folder)
    servers: list[Any] = []
    try:
        print(f"{prog}: setting up in {folder} ...", flush=True)
        setup_django(folder)
        servers = embedded_servers()
        text = body(procs)
        print()
        print(text, flush=True)
        return 0
    except BenchError as exc:
        print(f"{prog}: failed: {exc}", file=sys.stderr)
        for proc in procs.started:
            print(f"--- {proc.name} (pid {proc.process.pid}) log, last lines ---\n{tail(proc.log(), 15)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        cleanup(servers)
        shutil.rmtree(folder, ignore_errors=True)


def cleanup(servers: list[Any]) -> None:
    """Close this process's connections, stop the embedded servers, make sure they are gone.

    The embedded Redis only shuts down when its handle is its last client: every connection of
    this process (our client, kombu's pools, Django's cache) is closed first.
    """
    global _redis
    if _redis is not None:
        try:
            from bench import bare

            _redis.delete(*bare.KEYS)
        except Exception:
            pass
        _redis.close()
        _redis.connection_pool.disconnect()
        _redis = None
    try:
        from django.db import connections

        connections.close_all()
    except Exception:
        pass
    for app in _celery_apps():
        try:
            app.amqp.producer_pool.force_close_all()
            app.pool.force_close_all()
            app.close()
        except Exception:
            pass
    try:  # Django's Redis cache keeps its pools open (its close() does nothing)
        from django.core.cache import cache

        for pool in getattr(getattr(cache, "_cache", None), "_pools", {}).values():
            pool.disconnect()
    except Exception:
        pass
    if "project.embedded" in sys.modules:
        from project import embedded

        embedded.stop()
    import psutil

    for process in servers:  # still up (a client held it): stop it (psutil checks for pid reuse)
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                print(f"bench: stopping leftover server {process.name()} (pid {process.pid})", file=sys.stderr)
                process.terminate()
                process.wait(10)
        except psutil.TimeoutExpired:
            process.kill()
        except psutil.Error:
            pass


def _celery_apps() -> list[Any]:
    apps = []
    if "bench.bare" in sys.modules:
        apps += [sys.modules["bench.bare"].app, sys.modules["bench.bare"].defaults_app]
    if "project.celery" in sys.modules:
        apps.append(sys.modules["project.celery"].app)
    return apps

