"""`manage.py release`: the release step of a deploy (the Procfile's `release` line).

Migrates, then syncs the schedules declared in code, under a PostgreSQL advisory lock (both on the
direct connection, DATABASE_DIRECT_URL, when a pooler is in front): replicas that run it at the
same moment take turns; the first migrates, the others find nothing to apply. Servers and workers
never migrate (`manage.py start` refuses to start with migrations pending).
"""
from __future__ import annotations

import datetime as dt

from django.core.management import call_command
from django.core.management.base import BaseCommand

from project import pooler, release


class Command(BaseCommand):
    help = "Migrate, then sync schedules, one replica at a time (a PostgreSQL advisory lock)."

    def handle(self, *args: object, **opts: object) -> None:
        def waiting() -> None:
            self.stderr.write(f"release: another release holds the lock ({release.RELEASE_LOCK}); waiting for it")
            self.stderr.flush()

        pooler.refuse_misconfigured()  # a transaction-mode pooler needs DATABASE_DIRECT_URL (exit 2)
        with release.lock(on_wait=waiting) as waited:
            # The moment in words a person reads (UTC, to the microsecond: a test compares it with
            # django_migrations.applied), not seconds since the epoch.
            taken = dt.datetime.now(dt.timezone.utc).isoformat(sep=" ", timespec="microseconds")
            self.stderr.write(f"release: lock taken after {waited:.2f}s (at {taken}); migrating")
            self.stderr.flush()
            verbosity = int(opts.get("verbosity", 1))
            # Their own output goes to this process's stdout and stderr, as when run alone.
            call_command("migrate", interactive=False, verbosity=verbosity)
            call_command("sync_schedules", verbosity=verbosity)
        self.stderr.write("release: done; lock released")
