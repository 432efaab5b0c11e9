"""Job type declarations: validation at enqueue, refusal of duplicates, backoff with jitter."""
from __future__ import annotations

import pytest
from pydantic import BaseModel

from jobs.engine import registry
from jobs.engine.registry import Backoff, ImproperlyDeclared, InvalidJob, JobType


class Point(BaseModel):
    x: int
    y: int = 0


def handler(ctx, data):
    return None


def test_input_is_validated_and_normalized():
    jt = JobType("t.point", handler, input=Point)
    assert jt.validate({"x": "3"}) == {"x": 3, "y": 0}


def test_invalid_input_names_the_field():
    jt = JobType("t.point", handler, input=Point)
    with pytest.raises(InvalidJob) as info:
        jt.validate({"y": "nope"})
    assert set(info.value.errors) == {"input.x", "input.y"}


def test_schemaless_input_must_be_an_object():
    jt = JobType("t.any", handler)
    assert jt.validate(None) == {}
    with pytest.raises(InvalidJob):
        jt.validate([1, 2])


def test_duplicate_names_are_refused():
    with pytest.raises(ImproperlyDeclared, match="declared twice"):
        registry.add(JobType("examples.echo", handler))


def test_alias_of_an_existing_name_is_refused():
    with pytest.raises(ImproperlyDeclared, match="declared twice"):
        registry.add(JobType("t.new-name", handler, aliases=("images.resize",)))


def test_timeout_must_stay_under_the_visibility_timeout():
    """kombu#337: Redis hands an unacked message to another worker after the visibility timeout,
    so no job may run longer than it."""
    with pytest.raises(ImproperlyDeclared, match="VISIBILITY_TIMEOUT"):
        registry.add(JobType("t.too-long", handler, timeout=10**6))


def test_priority_out_of_range_is_refused():
    with pytest.raises(ImproperlyDeclared, match="priority"):
        registry.add(JobType("t.prio", handler, priority=12))


def test_unknown_type_is_invalid():
    with pytest.raises(InvalidJob, match="unknown job type"):
        registry.get("no.such.type")


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    backoff = Backoff(base=1.0, cap=10.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_queues_come_from_the_registry():
    assert {"default", "images", "notifications"} <= set(registry.queues())


def test_a_type_declared_atomic_says_so_and_others_are_not():
    # given a type declared with @job_type(..., atomic=True) and one without
    registry.job_type("t.atomic-declared", atomic=True)(handler)
    registry.job_type("t.plain-declared")(handler)
    try:
        # then the registry knows which runs in one transaction with its outcome
        assert registry.get("t.atomic-declared").atomic is True
        assert registry.get("t.plain-declared").atomic is False
    finally:
        registry.remove("t.atomic-declared")
        registry.remove("t.plain-declared")


def test_atomic_must_be_a_boolean():
    with pytest.raises(ImproperlyDeclared, match="atomic must be True or False"):
        registry.add(JobType("t.atomic-typo", handler, atomic="yes"))  # type: ignore[arg-type]
