"""Conveyor across hosts (issue 15): network namespaces on one machine, made by hosts/.

The chaos run (scripts/hosts.py chaos --small: 100 three-step chains across the two worker
hosts, 36 keyed events, 36 jobs of atomic types and 36 of their non-atomic twins (issue 27; a
pair of them running past their write on the host of each kill and of the cut), while worker
processes are SIGKILLed, PostgreSQL restarts, the Redis master is killed and Sentinel promotes
the replica, a worker host is cut off the network for 6 s while it runs two slow jobs, and the
leading beat is killed) must lose nothing, run nothing twice, leave nothing running and deliver
every key in order; the standby beat must take over; an atomic job's effect is written exactly
once, even where its runs were repeated after a fault. The scale table's smoke run
(bench.scale at tiny sizes, one round) must measure both sides across the two worker hosts, and
its autoscaled phase (issue 29: `start --autoscale 1,4` on worker host w1, a burst) must grow to
4 workers, shrink back to 1 and run each job once.

Both run as subprocesses (they build and remove their own hosts, PostgreSQL and Redis); where
this machine cannot make namespaces (not root, no `ip`), both skip saying why.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from hosts.harness import unavailable
from tests.support import ROOT

pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def namespaces() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)


def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: its `finally` tears the hosts down
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"{argv[1]} ran past {timeout}s:\n{output[-6000:]}")
    return subprocess.CompletedProcess(argv, process.returncode, output, "")


def test_chaos_across_hosts_loses_nothing(namespaces: None, tmp_path) -> None:
    # given hosts in namespaces, chains and keyed events going in, and every fault of the run
    summary_path = tmp_path / "summary.json"
    done = run([sys.executable, "scripts/hosts.py", "chaos", "--small", "--json", str(summary_path)], timeout=240)

    # then every chain and delivery succeeded, once, in order, nothing left running
    assert summary_path.exists(), done.stdout[-6000:]
    summary = json.loads(summary_path.read_text())
    print(done.stdout[-3000:])
    assert [fault["name"] for fault in summary["faults"]] == [
        "SIGKILL worker process", "PostgreSQL restarted", "SIGKILL worker process", "Redis master SIGKILLed",
        "SIGKILL worker process", "w1 cut off the network", "active beat SIGKILLed",
    ], summary["faults"]
    assert "Sentinel promoted" in summary["faults"][3]["detail"], summary["faults"][3]
    assert summary["chains"] == 100 and summary["chain_statuses"] == {"succeeded": 100}, summary
    assert summary["chain_jobs_succeeded"] == 300, summary
    assert summary["events"] == 36 and summary["delivery_statuses"] == {"succeeded": 36}, summary
    assert summary["lost"] == 0, summary
    assert summary["run_twice"] == 0, summary
    assert summary["left_running"] == 0, summary
    assert summary["out_of_order"] == 0, summary
    # w1, cut off while running its slow jobs, lost them to w2's reaper and its late outcomes were refused
    assert summary["faults"][5]["detail"].endswith("2 slow job(s) running there"), summary["faults"][5]
    assert summary["reaped"] >= 2 and summary["late_outcomes_refused"] >= 1, summary
    # every process exported its spans over OTLP to the run's receiver (issue 30): each chain is one
    # trace whatever fault its steps met, and (a span batched in a SIGKILLed process or on the cut
    # host is lost) most chains' traces hold the server's request and both worker hosts' runs
    trace = summary["trace"]
    assert trace["hosts"] == ["server", "w1", "w2"], trace
    assert trace["chains_seen"] == 100 and trace["chains_one_trace"] == 100, trace
    assert trace["chains_on_three_hosts"] >= 80, trace
    assert {"conveyor.enqueue", "conveyor.wait", "conveyor.claim", "conveyor.run", "conveyor.handoff"} <= set(trace["names"]), trace
    assert len(summary["slow_job_attempts"]) == 2 and min(summary["slow_job_attempts"]) >= 2, summary  # they ran again
    # the atomic jobs (36 lone ones, a slow one cut off after its write, one running at each of
    # the 3 kills) all succeeded, each effect written exactly once though runs were repeated; their
    # non-atomic twins (as many) succeeded too, the cut one's effect written again by its re-run
    assert summary["atomic_jobs"] == 40 and summary["atomic_statuses"] == {"succeeded": 40}, summary
    assert summary["atomic_written_twice"] == 0 and summary["atomic_lost"] == 0, summary
    assert summary["atomic_repeated"] >= 1, summary  # at least the slow one, reaped during the cut
    assert summary["plain_statuses"] == {"succeeded": 40} and summary["plain_lost"] == 0, summary
    assert summary["plain_repeated"] >= 1 and summary["plain_written_twice"] >= 1, summary
    # the standby beat took over (after a PostgreSQL restart killed its idle connection)
    assert summary["beat_ticks_after_kill"] and summary["beat_ticks_after_kill"] > 0, summary
    assert done.returncode == 0, done.stdout[-6000:]


def test_scale_table_smoke_across_two_hosts(namespaces: None) -> None:
    # when the scale table runs at tiny sizes on the two worker hosts
    done = run([sys.executable, "-m", "bench.scale", "--cpu-jobs", "3", "--io-jobs", "3", "--configs", "hosts,auto", "--rounds", "1",
                "--auto-jobs", "40"], timeout=260)

    # then both sides finished every job of both kinds, and each row says what bounded it
    assert done.returncode == 0, done.stdout[-6000:]
    rows = [line for line in done.stdout.splitlines() if "2 hosts x 2 processes" in line and ("CPU" in line or "I/O" in line)]
    assert len(rows) == 2, done.stdout[-3000:]
    for row in rows:
        kind, workers, conveyor, bare, ratio, conveyor_limit, bare_limit = re.split(r"\s{2,}", row.strip())
        assert float(conveyor) > 0 and float(bare) > 0 and ratio.endswith("x"), row
        for bound in (conveyor_limit, bare_limit):
            assert bound.startswith(("cores", "the sleep", "PostgreSQL", "Redis", "its ", "per-job overhead")), row
    # and the autoscaled cluster on w1 grew to 4 workers for the burst and shrank back to 1, each job run once
    auto = [line for line in done.stdout.splitlines() if line.startswith("autoscaled 1..4 processes (w1)")]
    assert len(auto) == 1, done.stdout[-3000:]
    assert "4 workers consuming after" in auto[0] and "back to 1 worker" in auto[0] and auto[0].endswith("each job run once")
