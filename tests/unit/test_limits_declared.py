"""Limits declared on a job type: rate strings parsed at declaration, bad ones refused by name."""
from __future__ import annotations

import pytest

from jobs.engine import registry
from jobs.engine.registry import ImproperlyDeclared, JobType, Rate, job_type, parse_rate


def handler(ctx, data):
    return None


@pytest.mark.parametrize(
    ("text", "count", "seconds", "interval"),
    [("20/s", 20, 1, 0.05), ("100/m", 100, 60, 0.6), ("5/h", 5, 3600, 720.0), ("1/s", 1, 1, 1.0)],
)
def test_rate_strings_give_starts_per_period_and_the_interval_between_starts(text, count, seconds, interval):
    rate = parse_rate(text)
    assert (rate.count, rate.seconds, rate.text) == (count, seconds, text)
    assert rate.interval == pytest.approx(interval)


@pytest.mark.parametrize(
    "text",
    ["", "20", "20/", "/s", "0/s", "-1/s", "1.5/s", "20/d", "20/sec", "20 / s", " 20/s", "20/S", "ten/s", "20/s/s"]
    + [20, None, "1234567890/s"],
)
def test_bad_rate_strings_are_refused_with_the_forms_that_work(text):
    with pytest.raises(ValueError, match=r"rate_limit .* is not '<count>/s', '<count>/m' or '<count>/h'"):
        parse_rate(text)


def test_a_bad_rate_is_refused_at_declaration_naming_the_type_and_the_string():
    with pytest.raises(ImproperlyDeclared, match=r"job type 't.bad-rate': rate_limit '20/fortnight' is not"):
        job_type("t.bad-rate", rate_limit="20/fortnight")(handler)
    with pytest.raises(registry.InvalidJob):
        registry.get("t.bad-rate")  # nothing was registered


@pytest.mark.parametrize("name", ["concurrency", "concurrency_per_key"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_concurrency_must_be_a_whole_number_of_at_least_one(name, value):
    with pytest.raises(ImproperlyDeclared, match=f"job type 't.bad-concurrency': {name} must be a whole number"):
        registry.add(JobType("t.bad-concurrency", handler, **{name: value}))
    with pytest.raises(registry.InvalidJob):
        registry.get("t.bad-concurrency")


def test_a_declared_type_carries_its_limits_parsed_and_listed_as_limited():
    job_type("t.limited", rate_limit="10/s", concurrency=3, concurrency_per_key=1, aliases=("t.limited-old",))(handler)
    job_type("t.unlimited")(handler)
    try:
        jt = registry.get("t.limited")
        assert jt.rate_limit == Rate(10, 1, "10/s")
        assert (jt.concurrency, jt.concurrency_per_key, jt.limited, jt.holds_slots) == (3, 1, True, True)
        assert jt.describe_limits() == "10/s, 3 at once, 1 per key"
        plain = registry.get("t.unlimited")
        assert (plain.limited, plain.holds_slots, plain.describe_limits()) == (False, False, "")
        assert {"t.limited", "t.limited-old"} <= set(registry.limited())
        assert "t.unlimited" not in registry.limited()
    finally:
        registry.remove("t.limited")
        registry.remove("t.unlimited")


def test_a_rate_alone_holds_no_concurrency_slot():
    jt = registry._checked_limits(JobType("t.rate-only", handler, rate_limit="5/m"))
    assert jt.limited and not jt.holds_slots
    assert jt.rate_limit.interval == pytest.approx(12.0)
