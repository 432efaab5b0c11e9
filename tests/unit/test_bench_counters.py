"""bench.cluster's CPU and core-wait columns: differences of per-process and per-thread counters."""

import os
import random

from bench.cluster import Result, Scenario, busiest_for_others, cpu_spent, machine_busy, others_spent, p99_ratio_interval
from bench.common import percentile


def test_a_thread_or_process_that_ended_between_the_samples_makes_no_negative_figure():
    # CI's failure: a gunicorn thread that exited mid-measurement took its waits out of the second
    # sum, and the web wait column printed a negative number.
    before = {("gunicorn", 10): 2.0, ("web-wait", 10, 11): 0.5, ("web-wait", 10, 12): 0.25, ("celery", 20): 5.0}
    after = {("gunicorn", 10): 2.5, ("web-wait", 10, 11): 0.75, ("celery", 30): 1.0}
    spent = cpu_spent(before, after)
    assert spent == {"gunicorn": 0.5, "celery": 1.0, "web-wait": 0.25}


def test_a_process_or_thread_that_started_between_the_samples_counts_whole():
    before = {("gunicorn", 10): 2.0}
    after = {("gunicorn", 10): 2.0, ("gunicorn", 40): 0.125, ("web-wait", 40, 41): 0.0625}
    assert cpu_spent(before, after) == {"gunicorn": 0.125, "celery": 0.0, "web-wait": 0.0625}


# --- Other processes' CPU during a measurement, and the spread of the judged ratio -------------


def test_machine_busy_counts_every_state_but_idle_and_iowait(tmp_path):
    stat = tmp_path / "stat"
    #            user nice system idle  iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 20 30 5000 700 4 6 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert machine_busy(str(stat)) == (100 + 20 + 30 + 4 + 6 + 40) / os.sysconf("SC_CLK_TCK")


def test_other_processes_cpu_is_the_machines_busy_time_less_the_benchs_own():
    own_before = {1: 10.0, 2: 3.0}
    own_after = {1: 11.5, 2: 3.5, 3: 0.25}  # 3 started during the measurement: counted whole
    assert others_spent(100.0, 104.0, own_before, own_after) == 4.0 - 2.25


def test_other_processes_cpu_is_never_negative():
    # the machine's counter and the processes' are read a moment apart: ours may seem the larger
    assert others_spent(100.0, 101.0, {1: 0.0}, {1: 1.25}) == 0.0


def test_the_ratio_interval_holds_the_ratio_and_narrows_with_more_requests():
    rng = random.Random(1)
    idle = [rng.gauss(10, 1) for _ in range(2000)]
    loaded = [rng.gauss(12, 1.5) for _ in range(2000)]
    ratio = percentile(loaded, 0.99) / percentile(idle, 0.99)
    low, high = p99_ratio_interval(loaded, idle)
    assert low < ratio < high
    few_low, few_high = p99_ratio_interval(loaded[:200], idle[:200])
    assert few_high - few_low > high - low


def test_the_ratio_interval_is_repeatable():
    idle, loaded = [float(i % 13) + 5 for i in range(300)], [float(i % 17) + 5 for i in range(300)]
    assert p99_ratio_interval(loaded, idle) == p99_ratio_interval(loaded, idle)


def test_a_run_is_busy_when_other_processes_took_over_a_quarter_core_in_some_scenario():
    def result(key: str, others: float) -> Result:
        return Result(Scenario(key, key, False, [], {}, 1, ""), [10.0], 10.0, 0, 0, others=others)

    quiet, noisy = result("idle", 1.0), result("split-idle", 3.0)  # 0.1 and 0.3 cores over 10 s
    assert busiest_for_others([quiet, result("split", 2.5)]) is None  # 0.25 cores: not over
    assert busiest_for_others([quiet, noisy]) is noisy
