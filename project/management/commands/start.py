"""`manage.py start`: run Conveyor in the role of WORKER_MODE, or a cluster of roles.

    manage.py start                                  one instance, WORKER_MODE (default shared)
    manage.py start --queues images --pool prefork   a worker specialized on one queue
    manage.py start --cluster 4 --servers 25% --workers 75%
    manage.py start --cluster 2 --servers 1 --workers 1 --autoscale 1,4   workers grow and shrink (project/autoscale.py)

Servers are gunicorn on PORT (uvicorn's ASGI worker class: project/asgi_worker.py); workers are
Celery workers; shared instances run both. Every
child joins the embedded PostgreSQL and Redis this process started (or the configured ones).
"""
from __future__ import annotations

import errno
import os
import socket
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from jobs.engine import registry
from jobs.engine.recovery import hand_back
from project import env as environment
from project import autoscale, hints, pooler, release, roles
from project.supervisor import Child, Supervisor

POOLS = ("prefork", "threads", "solo", "gevent", "eventlet")


class Command(BaseCommand):
    help = "Start Conveyor: servers (HTTP), workers (Celery) or both, alone or as a cluster."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument(
            "--queues",
            default=",".join(settings.WORKER_QUEUES),
            help="comma-separated queues to consume (default: every job type's queue; WORKER_QUEUES)",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=settings.WORKER_CONCURRENCY or None,
            help="worker processes or threads (WORKER_CONCURRENCY; default: CPUs)",
        )
        parser.add_argument("--pool", default="prefork", choices=POOLS, help="Celery pool: prefork for CPU work, threads for I/O")
        parser.add_argument("--port", type=int, default=settings.PORT, help="HTTP port of servers (PORT, default 8000)")
        parser.add_argument("--web-concurrency", type=int, default=2, help="gunicorn (ASGI) worker processes per server")
        parser.add_argument("--grace", type=float, default=30.0, help="seconds to drain on SIGTERM before killing (default 30)")
        parser.add_argument("--cluster", nargs="?", type=int, const=-1, default=None, help="run N instances (no N: one per CPU)")
        parser.add_argument("--servers", default=None, help="how many instances serve HTTP only: a count or a percentage")
        parser.add_argument("--workers", default=None, help="how many instances only consume queues: a count or a percentage")
        parser.add_argument("--no-beat", action="store_true", help="run no beat scheduler in this start")
        parser.add_argument(
            "--autoscale", default=None, metavar="MIN,MAX",
            help="with --cluster: grow and shrink the worker instances between MIN and MAX from the queues' work "
            "(starting from --workers, within the bounds)",
        )
        parser.add_argument("--autoscale-interval", type=float, default=2.0, help="seconds between two reads of the queues (default 2)")
        parser.add_argument(
            "--shrink-after", type=float, default=30.0,
            help="seconds fewer workers must be wanted before the autoscaler retires any (default 30)",
        )

    def handle(self, *args: object, **opts: object) -> None:
        queues = self._queues(str(opts["queues"] or ""))
        concurrency = opts["concurrency"]
        if concurrency is not None and int(concurrency) < 1:
            raise CommandError("--concurrency must be at least 1", returncode=2)
        if float(opts["grace"]) < 0:
            raise CommandError("--grace must not be negative", returncode=2)
        if opts["cluster"] is not None:
            try:
                cluster = int(opts["cluster"])
                plan = roles.split(None if cluster == -1 else cluster, opts["servers"], opts["workers"])
            except roles.SplitError as exc:
                raise CommandError(str(exc), returncode=2) from None
            modes = plan.modes()
        else:
            if opts["servers"] is not None or opts["workers"] is not None:
                raise CommandError("--servers and --workers need --cluster", returncode=2)
            modes = [settings.WORKER_MODE]
        bounds = self._autoscale(opts)
        if bounds is not None:
            # The worker instances are the autoscaled pool: it starts from --workers, within the bounds.
            count = min(bounds[1], max(bounds[0], modes.count("worker")))
            modes = [mode for mode in modes if mode != "worker"] + ["worker"] * count
        if self._refuse_pending_migrations():  # the database answered: is it behind a pooler?
            pooler.refuse_misconfigured()  # a transaction-mode pooler needs DATABASE_DIRECT_URL (exit 2)
        if any(map(roles.serves_http, modes)):
            self._refuse_busy_port(int(opts["port"]))
        # An autoscaled cluster names its workers worker-<n> even when it starts with one instance.
        children = self._children(modes, queues, opts, single=len(modes) == 1 and bounds is None)
        if bounds is not None:
            for child in children:
                if child.info.get("role") == "worker":
                    child.info["autoscaled"] = True
        # One beat per start (shared mode or a cluster); more beats elsewhere wait as standbys.
        if not opts["no_beat"] and (opts["cluster"] is not None or modes == ["shared"]):
            beat = [sys.executable, "-m", "celery", "-A", "project", "beat", "--loglevel", "INFO"]
            children.append(Child("beat", beat, {"WORKER_MODE": "worker"}, {"role": "beat"}))
        self.stdout.write(
            f"conveyor: {len(modes)} instance(s): "
            + ", ".join(f"{modes.count(m)} {m}" for m in roles_order(modes))
            + (f"; HTTP on http://{self._bind(int(opts['port']))}/" if any(map(roles.serves_http, modes)) else "")
            + f"; queues {','.join(queues)}"
        )
        if any(map(roles.serves_http, modes)):
            base = f"http://{self._bind(int(opts['port']))}"
            self.stdout.write(f"conveyor: API {base}/api/docs, health {base}/health/ready, metrics {base}/metrics")
            if not settings.ADMIN_DISABLED:
                self.stdout.write(f"conveyor: admin {base}/admin/ ({hints.login_hint(hints.python_command())})")
        scaler = None
        if bounds is not None:
            scaler = self._scaler(bounds, queues, opts, first=len(modes) + 1)
            self.stdout.write(
                f"conveyor: autoscaling workers between {bounds[0]} and {bounds[1]} "
                f"({scaler.per_worker} job(s) at once each; read every {opts['autoscale_interval']:g}s, "
                f"shrinking after {opts['shrink_after']:g}s)"
            )
        self.stdout.flush()
        supervisor = Supervisor(
            children,
            grace=float(opts["grace"]),
            state_dir=settings.DATA_DIR / "run",
            # That start's jobs only: another supervisor may run a worker with the same node name.
            # Drained on purpose: the interrupted attempts are given back; crashed: they count.
            on_killed=lambda child, drained: hand_back(
                str(child.info.get("node", "")), str(child.info.get("instance", "")), drained=drained
            ),
            scaler=scaler,
            scale_interval=float(opts["autoscale_interval"]),
        )
        code = supervisor.run()
        if settings.WORKER_CPU_POLICY == "idle":
            from jobs.engine import cpu_policy

            cpu_policy.remove_idle_cgroup()  # every child has ended: the idle cgroup is empty (unless another start's)
        sys.exit(code)

    def _autoscale(self, opts: dict) -> tuple[int, int] | None:
        """(MIN, MAX) of --autoscale, or None; exit 2 naming what does not fit."""
        if opts.get("autoscale") is None:
            return None
        if opts["cluster"] is None:
            raise CommandError("--autoscale needs --cluster (the worker instances of a cluster are what it scales)", returncode=2)
        try:
            bounds = autoscale.parse(str(opts["autoscale"]))
        except autoscale.AutoscaleError as exc:
            raise CommandError(str(exc), returncode=2) from None
        if not float(opts["autoscale_interval"]) > 0:
            raise CommandError("--autoscale-interval must be above 0 seconds", returncode=2)
        if not float(opts["shrink_after"]) >= 0:
            raise CommandError("--shrink-after must not be negative", returncode=2)
        return bounds

    def _scaler(self, bounds: tuple[int, int], queues: list[str], opts: dict, first: int) -> autoscale.Autoscaler:
        """The supervisor's autoscaler: reads the queues' work from the database, adds workers
        named worker-<n> (n counting on from the cluster's instances, never reused)."""
        from django.db import connections

        from jobs.engine import scaling

        per_worker = int(opts["concurrency"] or 0) or (os.cpu_count() or 1)
        numbers = iter(range(first, 1 << 30))

        def read() -> tuple[int, dict[str, int]]:
            try:
                return scaling.demand(queues, per_worker)
            except Exception:
                connections.close_all()  # a fresh connection on the next read (the database restarted)
                raise

        def make_worker() -> Child:
            child = self._worker(f"worker-{next(numbers)}", "worker", queues, opts, single=False)
            child.info["autoscaled"] = True
            return child

        return autoscale.Autoscaler(bounds[0], bounds[1], read, make_worker, shrink_after=float(opts["shrink_after"]),
                                    per_worker=per_worker)

    def _refuse_pending_migrations(self) -> bool:
        """Exit 2 when the database lacks migrations: servers and workers never migrate, the
        release step does (`manage.py release`, under its lock). In development too: `make run`
        runs the release step first, and code ahead of its tables fails the same way everywhere.

        A database that does not answer is not a reason to refuse: the instance starts, its
        /health/ready says postgres is unreachable, and workers wait for it (as before this check).
        Returns whether the database answered.
        """
        try:
            missing = release.pending()
        except release.Unreachable as exc:
            self.stderr.write(f"conveyor: could not check migrations (PostgreSQL did not answer: {exc}); starting anyway")
            return False
        if missing:
            raise CommandError(
                f"{len(missing)} migration(s) not applied (first: {missing[0]}); "
                f"run `{hints.python_command()} manage.py release` first",
                returncode=2,
            )
        return True

    def _queues(self, raw: str) -> list[str]:
        known = registry.queues()
        if not raw:
            return known
        wanted = [q.strip() for q in raw.split(",") if q.strip()]
        unknown = [q for q in wanted if q not in known]
        if unknown:
            raise CommandError(f"--queues: no job type uses {', '.join(unknown)} (known queues: {', '.join(known)})", returncode=2)
        return wanted

    def _host(self) -> str:
        """HOST when set (a production test binds loopback), else 0.0.0.0 in production, 127.0.0.1 otherwise."""
        return environment.get("HOST") or ("0.0.0.0" if settings.PRODUCTION else "127.0.0.1")

    def _bind(self, port: int) -> str:
        return f"{self._host()}:{port}"

    def _refuse_busy_port(self, port: int) -> None:
        """Exit 2 when the port is already served, before starting anything.

        The servers of one start share their port through SO_REUSEPORT, which would just as
        silently let a second start share it with the first. The probe binds without it (with
        SO_REUSEADDR, so a closed port's TIME_WAIT does not count): a listener refuses it.
        """
        host = self._host()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                reason = "already in use (another start or program serves it)" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise CommandError(f"port {port} on {host}: {reason}; stop it or choose another --port", returncode=2) from None

    def _children(self, modes: list[str], queues: list[str], opts: dict, single: bool) -> list[Child]:
        python = sys.executable
        children: list[Child] = []
        for index, mode in enumerate(modes, start=1):
            label = mode if single else f"{mode}-{index}"
            env = {"WORKER_MODE": mode}
            if roles.serves_http(mode):
                argv = [
                    # ASGI under uvicorn's worker class: `?wait=` waits on the event loop
                    # (project/asgi.py), taking no worker; --timeout is then a heartbeat only.
                    python, "-m", "gunicorn", "project.asgi:application",
                    "--worker-class", "project.asgi_worker.ConveyorWorker",
                    "--bind", self._bind(int(opts["port"])),
                    "--reuse-port",  # every server instance of a cluster shares the one port
                    # gunicorn's logger, naming the address its master no longer binds (reuse-port)
                    "--logger-class", "project.gunicorn_log.ConveyorLogger",
                    "--workers", str(opts["web_concurrency"]),
                    "--graceful-timeout", str(int(float(opts["grace"]))),
                    "--access-logfile", "-",
                    # gunicorn's control socket has one default path: servers of a cluster would share it.
                    "--no-control-socket",
                    "--name", f"conveyor-{label}",
                ]
                children.append(Child(f"{label}/web", argv, env, {"role": mode, "port": int(opts["port"])}))
            if roles.consumes(mode):
                children.append(self._worker(label, mode, queues, opts, single))
        return children

    def _worker(self, label: str, mode: str, queues: list[str], opts: dict, single: bool) -> Child:
        """The Celery worker child of one instance."""
        host = socket.gethostname()
        # Unique per supervisor: a node's running jobs are handed back by name when it dies.
        if single:
            worker_id = settings.WORKER_ID or f"{mode}.{os.getpid()}@{host}"
        else:
            worker_id = f"{label}@{settings.WORKER_ID}" if settings.WORKER_ID else f"{label}.{os.getpid()}@{host}"
        argv = [
            sys.executable, "-m", "celery", "-A", "project", "worker",
            "--hostname", worker_id,
            "--queues", ",".join(queues),
            "--pool", str(opts["pool"]),
            "--loglevel", "INFO",
            # No start-up handshake or heartbeats between workers: nothing here uses them.
            "--without-mingle", "--without-gossip",
        ]
        if opts["concurrency"]:
            argv += ["--concurrency", str(opts["concurrency"])]
        return Child(f"{label}/worker", argv, {"WORKER_MODE": mode}, {"role": mode, "node": worker_id, "queues": ",".join(queues)})


def roles_order(modes: list[str]) -> list[str]:
    return [m for m in ("server", "worker", "shared") if m in modes]
