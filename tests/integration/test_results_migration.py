"""Migration jobs 0009 on the session's real PostgreSQL: the results a group handed on, copied into
every job of the next step before it (`Job.results`), move into one set of `jobs_stepresult` rows
per chain step, each job keeping their count; and back."""
from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from jobs.engine import store
from jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

BEFORE = ("jobs", "0008_operate_permission")


def migrate(target: list[tuple[str, str]]):
    MigrationExecutor(connection).migrate(target)
    return MigrationExecutor(connection).loader.project_state(target).apps


def latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def test_the_migration_stores_each_steps_results_once_and_counts_them_on_its_jobs():
    # given, before the migration, a step of three jobs each holding the same results, a job
    # holding results of its own (a step of one), and a job holding none
    old = migrate([BEFORE])
    try:
        OldChain, OldJob = old.get_model("jobs", "Chain"), old.get_model("jobs", "Job")
        chain = OldChain.objects.create(steps=[])
        handed = [{"n": 0}, {"error": "RuntimeError: x", "status": "dead", "job": 7}, None]
        group = [OldJob.objects.create(type="examples.echo", queue="default", chain_id=chain.pk, chain_index=1, member=m,
                                       results=handed).pk for m in range(3)]
        single = OldJob.objects.create(type="examples.gather", queue="default", chain_id=chain.pk, chain_index=2,
                                       results=[{"m": 1}]).pk
        plain = OldJob.objects.create(type="examples.echo", queue="default", chain_id=chain.pk, chain_index=0).pk
    finally:
        # when the migrations run
        migrate(latest())

    # then each step's results are stored once, in member order, and its jobs count them
    with connection.cursor() as cursor:
        cursor.execute("SELECT step, count(*) FROM jobs_stepresult WHERE chain_id = %s GROUP BY step ORDER BY step", [chain.pk])
        assert cursor.fetchall() == [(1, 3), (2, 1)]
    assert store.step_results(chain.pk, 1) == handed and store.step_results(chain.pk, 2) == [{"m": 1}]
    counts = dict(Job.objects.filter(chain_id=chain.pk).values_list("id", "results_count"))
    assert counts == {**dict.fromkeys(group, 3), single: 1, plain: None}

    # and migrating back puts each list into its jobs again
    old = migrate([BEFORE])
    try:
        rows = dict(old.get_model("jobs", "Job").objects.filter(chain_id=chain.pk).values_list("id", "results"))
        assert rows == {**dict.fromkeys(group, handed), single: [{"m": 1}], plain: None}
    finally:
        migrate(latest())
