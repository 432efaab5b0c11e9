"""`manage.py flower`: Flower on the platform's broker, refused in production without auth.

Flower reads FLOWER_BASIC_AUTH (`user:password[,user2:password2]`) itself, or OAuth with
FLOWER_AUTH_PROVIDER (plus FLOWER_OAUTH2_KEY, FLOWER_OAUTH2_SECRET, FLOWER_OAUTH2_REDIRECT_URI
and FLOWER_AUTH, the allowed e-mails). In production one of them must be set: an open Flower
shows every job's arguments and can revoke tasks. It listens on FLOWER_ADDRESS (default
127.0.0.1) and FLOWER_PORT (default 5555), keeping the last 10,000 tasks and forgetting workers
offline for 5 minutes. Workers send task events only when asked (TASK_EVENTS, project.settings):
the command asks the running ones at once, and Flower asks every 2 s (`--events_enable_interval`),
so a worker started later shows its tasks within that time.

In development (not production), a Flower with no auth on a loopback address also opens its HTTP
API (`/api/...`, which its own pages' buttons use): Flower answers it 401 unless
FLOWER_UNAUTHENTICATED_API is set, while the same Flower's pages are open. The command sets it for
its child then, and says so in one line; with FLOWER_BASIC_AUTH the API asks for it, as the pages do.

The command then runs `celery -A project flower` as its child and waits for it, rather than
becoming it (exec): an exec'd process never runs this one's exit handlers, so the embedded
servers' handles (project/embedded.py, development) were never released and the embedded
PostgreSQL outlived everything. The child runs in a process group of its own, gets every stopping
signal this process gets (SIGTERM, SIGINT, SIGHUP, SIGQUIT; a terminal's Ctrl-C reaches it once,
through here) and SIGTERM if this process dies without a word (SIGKILL: Linux's parent-death
signal). When it exits, the handles are released, and this process ends as it did: its exit code,
or killed by the same signal, as the exec'd Flower would have been.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

from django.conf import settings
from django.core.management.base import BaseCommand

from project import env

HISTORY = ["--max_tasks=10000", "--purge_offline_workers=300"]
EVENTS = ["--events_enable_interval=2000"]


def flower_argv() -> list[str]:
    address = env.get("FLOWER_ADDRESS", "127.0.0.1") or "127.0.0.1"
    port = env.get_int("FLOWER_PORT", 5555, minimum=1)
    return [sys.executable, "-m", "celery", "-A", "project", "flower", f"--port={port}", f"--address={address}", *HISTORY, *EVENTS]


LOOPBACK = ("127.", "localhost", "::1")


def open_api_in_development(environ: dict[str, str], production: bool) -> dict[str, str]:
    """The child's environment: in development, with no auth and a loopback address, Flower's
    HTTP API opened (FLOWER_UNAUTHENTICATED_API=true) as its pages are; otherwise as given."""
    has_auth = environ.get("FLOWER_BASIC_AUTH") or environ.get("FLOWER_AUTH_PROVIDER")
    address = environ.get("FLOWER_ADDRESS") or "127.0.0.1"
    if production or has_auth or "FLOWER_UNAUTHENTICATED_API" in environ or not address.startswith(LOOPBACK):
        return dict(environ)
    return {**environ, "FLOWER_UNAUTHENTICATED_API": "true"}


def check_auth() -> None:
    """In production, exit 2 with one line unless Flower has basic auth or an OAuth provider."""
    if not settings.PRODUCTION:
        return
    if env.get("FLOWER_BASIC_AUTH"):
        if not all(":" in pair and pair.split(":", 1)[1] for pair in env.get("FLOWER_BASIC_AUTH").split(",")):
            env.fail("FLOWER_BASIC_AUTH must be user:password (comma-separated pairs)")
        return
    if env.get("FLOWER_AUTH_PROVIDER") and env.get("FLOWER_AUTH"):
        return
    env.fail("FLOWER_BASIC_AUTH is not set (production Flower needs basic auth, or FLOWER_AUTH_PROVIDER with FLOWER_AUTH)")


def enable_task_events() -> None:
    """Ask the running workers for task events now (Flower's own first request comes later)."""
    from project.celery import app

    try:
        app.control.enable_events()
    except Exception as exc:  # the broker is away: Flower asks again once it is connected
        print(f"flower: could not ask the workers for task events yet ({exc})", file=sys.stderr)


class Command(BaseCommand):
    help = "Start Flower (127.0.0.1:5555 unless FLOWER_ADDRESS / FLOWER_PORT); production requires FLOWER_BASIC_AUTH."
    requires_system_checks: list[str] = []

    def handle(self, *args: object, **opts: object) -> None:
        check_auth()
        enable_task_events()
        argv = flower_argv()
        child_env = open_api_in_development(dict(os.environ), settings.PRODUCTION)
        if child_env.get("FLOWER_UNAUTHENTICATED_API") == "true" and "FLOWER_UNAUTHENTICATED_API" not in os.environ:
            print("flower: development, no auth: its HTTP API (/api/...) is open on loopback as its pages are "
                  "(FLOWER_UNAUTHENTICATED_API=true; set FLOWER_BASIC_AUTH=user:password to close both)", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        code = run_child(argv, child_env)
        from project import embedded

        embedded.stop()  # before a signal's death below, which runs no exit handler
        if code < 0:  # Flower was killed by a signal: so is this process, as with exec
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        sys.exit(code if code >= 0 else 128 - code)


#: The signals a supervisor or a terminal stops Flower with, passed on to it.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _dying_with(parent: int):  # noqa: ANN202 - a preexec_fn
    def die_with_parent() -> None:
        """In the child, before Flower starts: SIGTERM when `parent` dies (Linux's PR_SET_PDEATHSIG)."""
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent:  # it died before that was set
                os._exit(1)
    return die_with_parent


def run_child(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run `argv` in a process group of its own, pass it the stopping signals, wait for it:
    its return code (negative: the signal that killed it)."""
    child: subprocess.Popen | None = None
    early: list[int] = []  # signals received before the child existed

    def forward(signum: int, frame: object) -> None:
        if child is None:
            early.append(signum)
        elif child.poll() is None:
            child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        child = subprocess.Popen(argv, env=env, process_group=0, preexec_fn=_dying_with(os.getpid()))
        for signum in early:
            child.send_signal(signum)
        return child.wait()  # PEP 475: wait() resumes after each forwarded signal
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
