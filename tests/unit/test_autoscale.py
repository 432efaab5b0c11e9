"""`start --autoscale MIN,MAX`: the argument's parsing and the autoscaler's bookkeeping (which
children it adds and retires), over a stand-in for the supervisor's two calls; the decision itself
is decisions.scale (tests/unit/test_decisions.py), the real processes tests/acceptance/test_cluster.py."""
from __future__ import annotations

import pytest

from project import autoscale
from project.supervisor import Child


@pytest.mark.parametrize(("raw", "bounds"), [("1,4", (1, 4)), (" 0 , 3 ", (0, 3)), ("2,2", (2, 2))])
def test_autoscale_parses_min_and_max(raw, bounds):
    assert autoscale.parse(raw) == bounds


@pytest.mark.parametrize(("raw", "says"), [
    ("4", "expected MIN,MAX"), ("1,2,3", "expected MIN,MAX"), ("a,b", "expected MIN,MAX"), ("-1,3", "expected MIN,MAX"),
    ("1.5,3", "expected MIN,MAX"), ("", "expected MIN,MAX"), ("0,0", "MAX must be at least 1"), ("5,2", "MIN (5) is above MAX (2)"),
])
def test_a_bad_autoscale_is_refused_naming_it(raw, says):
    with pytest.raises(autoscale.AutoscaleError, match="--autoscale") as refused:
        autoscale.parse(raw)
    assert says in str(refused.value)


class Plan:
    """The supervisor's side: its children, add and retire (what Supervisor does, without processes)."""

    def __init__(self, workers: int) -> None:
        self.children = [Child("web", ["x"], info={"role": "server"})]
        self.children += [Child(f"worker-{n}/worker", ["x"], info={"role": "worker", "autoscaled": True}) for n in range(workers)]
        self.retired: list[str] = []

    def add(self, child: Child) -> None:
        self.children.append(child)

    def retire(self, child: Child) -> None:
        child.retiring_until = 1.0
        self.retired.append(child.name)

    def pool(self) -> list[str]:
        return [c.name for c in autoscale.Autoscaler.pool(self)]


def scaler(wanted: list[int], now: list[float], shrink_after: float = 10.0) -> autoscale.Autoscaler:
    made = iter(range(100, 200))
    return autoscale.Autoscaler(
        1, 3, read=lambda: (wanted[0], {"waiting": wanted[0], "running": 0}),
        make_worker=lambda: Child(f"worker-{next(made)}/worker", ["x"], info={"role": "worker", "autoscaled": True}),
        shrink_after=shrink_after, clock=lambda: now[0],
    )


def test_the_autoscaler_adds_workers_up_to_max_then_retires_the_newest_after_the_low_spell(caplog):
    caplog.set_level("INFO", "conveyor.autoscale")
    plan, wanted, now = Plan(1), [7], [100.0]
    scale = scaler(wanted, now)
    # a burst: two workers added (1 -> MAX 3), the server untouched
    scale(plan)
    assert plan.pool() == ["worker-0/worker", "worker-100/worker", "worker-101/worker"]
    assert "autoscale: grow" in caplog.text and "1 -> 3" in caplog.text
    # the queue drained: nothing retired before shrink_after ...
    wanted[0], now[0] = 0, 101.0
    scale(plan)
    now[0] = 110.0
    scale(plan)
    assert plan.retired == []
    # ... then the two newest, down to MIN
    now[0] = 111.0
    scale(plan)
    assert plan.retired == ["worker-101/worker", "worker-100/worker"] and plan.pool() == ["worker-0/worker"]
    assert "autoscale: shrink" in caplog.text


def test_the_autoscaler_holds_the_workers_when_it_cannot_read(caplog):
    plan = Plan(2)

    def unreadable() -> tuple[int, dict[str, int]]:
        raise OSError("connection refused")

    scale = autoscale.Autoscaler(1, 3, read=unreadable, make_worker=lambda: Child("x", ["x"]), clock=lambda: 0.0)
    scale(plan)
    scale(plan)
    assert len(plan.pool()) == 2 and plan.retired == []
    assert caplog.text.count("cannot read the queues (connection refused); holding 2 worker(s)") == 1


@pytest.mark.parametrize(("args", "says"), [
    (["--cluster", "2", "--autoscale", "4"], "--autoscale '4': expected MIN,MAX"),
    (["--cluster", "2", "--autoscale", "3,1"], "MIN (3) is above MAX (1)"),
    (["--autoscale", "1,3"], "--autoscale needs --cluster"),
    (["--cluster", "2", "--autoscale", "1,3", "--autoscale-interval", "0"], "--autoscale-interval must be above 0"),
    (["--cluster", "2", "--autoscale", "1,3", "--shrink-after", "-1"], "--shrink-after must not be negative"),
])
def test_start_refuses_a_bad_autoscale_with_exit_2_before_starting_anything(args, says):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as refused:
        call_command("start", *args)
    assert refused.value.returncode == 2 and says in str(refused.value)
