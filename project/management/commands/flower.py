"""`manage.py flower`: Flower on the platform's broker, refused in production without auth.

Flower reads FLOWER_BASIC_AUTH (`user:password[,user2:password2]`) itself, or OAuth with
FLOWER_AUTH_PROVIDER (plus FLOWER_OAUTH2_KEY, FLOWER_OAUTH2_SECRET, FLOWER_OAUTH2_REDIRECT_URI
and FLOWER_AUTH, the allowed e-mails). In production one of them must be set: an open Flower
shows every job's arguments and can revoke tasks. It listens on FLOWER_ADDRESS (default
127.0.0.1) and FLOWER_PORT (default 5555), keeping the last 10,000 tasks and forgetting workers
offline for 5 minutes. Workers send task events only when asked (TASK_EVENTS, project.settings):
the command asks the running ones at once, and Flower asks every 2 s (`--events_enable_interval`),
so a worker started later shows its tasks within that time. The command then becomes `celery -A
project flower` (exec: same pid).
"""
from __future__ import annotations

import os
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
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(argv[0], argv)
