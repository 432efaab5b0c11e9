"""The transactional tests' teardown (tests/conftest.py: `_flush_what_the_test_wrote`) leaves the
test database as Django's `flush` does: every table empty but the content types and permissions,
and those exactly the rows post_migrate would write."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.management.sql import emit_post_migrate_signal
from django.db import connection, transaction
from django.test import TransactionTestCase

from jobs import Step, enqueue_many
from tests.conftest import KEPT_BY_THE_FLUSH

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def row_counts() -> dict[str, int]:
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    with connection.cursor() as cursor:
        return {table: cursor.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}


class Teardown(TransactionTestCase):
    __test__ = False  # not a test of its own: its teardown is called below
    databases = {"default", "claims", "direct"}

    def runTest(self) -> None:  # a test case only for its teardown
        pass


def test_the_teardown_empties_what_a_test_wrote_and_keeps_the_content_types_and_permissions_post_migrate_writes():
    # given rows in several tables (jobs, users, a group holding a permission), a row written in a
    # transaction rolled back, and a table analyzed while empty
    enqueue_many([Step("examples.echo", {"n": n}) for n in range(3)])
    group = Group.objects.create(name="operators")
    group.permissions.add(Permission.objects.get(codename="operate"))
    User.objects.create(username="someone")
    with pytest.raises(RuntimeError), transaction.atomic():
        Group.objects.create(name="rolled back")
        raise RuntimeError
    with connection.cursor() as cursor:
        cursor.execute('ANALYZE "jobs_pause"')
    kept = {table: count for table, count in row_counts().items() if table in KEPT_BY_THE_FLUSH}
    assert kept["django_content_type"] and kept["auth_permission"], kept

    # when the teardown runs
    Teardown()._fixture_teardown()

    # then every table is empty but the content types and permissions, which are as they were
    counts = row_counts()
    assert {table: count for table, count in counts.items() if table not in KEPT_BY_THE_FLUSH and count} == {}
    assert {table: counts[table] for table in KEPT_BY_THE_FLUSH} == kept
    with connection.cursor() as cursor:  # the analyzed table is back to "never analyzed", as TRUNCATE leaves it
        assert cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'jobs_pause'").fetchone()[0] < 0
    # and post_migrate, as Django's flush runs it, finds nothing missing: the same rows
    ContentType.objects.clear_cache()
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
    assert {table: row_counts()[table] for table in KEPT_BY_THE_FLUSH} == kept
