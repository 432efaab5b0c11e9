"""`manage.py migrate`, Django's, on the direct connection when DATABASE_DIRECT_URL is set.

Migrations need a session: a non-atomic migration runs statements outside one transaction, a
`SET` or a lock outlives a statement, and a transaction-mode pooler (PgBouncer) in front of
DATABASE_URL would hand them to other clients' server connections (project/pooler.py). With
DATABASE_DIRECT_URL set, `--database` defaults to the "direct" alias (PostgreSQL itself); the
release step (`manage.py release`) runs this command. `--database default` still forces the
pooled one.
"""
from __future__ import annotations

from django.conf import settings
from django.core.management.commands import migrate

from project import pooler


class Command(migrate.Command):
    def add_arguments(self, parser) -> None:  # noqa: ANN001
        super().add_arguments(parser)
        if settings.DATABASE_DIRECT_URL:
            parser.set_defaults(database=pooler.DIRECT)
