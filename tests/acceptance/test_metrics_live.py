"""/metrics after a known workload on a real prefork worker: exact counts per type and outcome,
histogram buckets, and JSON log lines carrying the failing job's ids."""
from __future__ import annotations

import json
import time

import pytest

from jobs import Step, enqueue, start_chain
from jobs.engine import control, registry
from jobs.models import Job, Status
from tests.integration.test_metrics import TOKEN, families, scrape, status, values  # noqa: F401
from tests.support import wait_for, wait_job

@pytest.mark.live
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_live_prefork_worker_s_workload_is_counted_exactly_by_type_and_outcome(live):
    # given a worker of two prefork processes writing JSON logs
    worker = live.start(
        "--grace", "5", "--pool", "prefork", "--concurrency", "2", mode="worker", name="metrics", env={"LOG_FORMAT": "json"}
    )
    # and a known workload: 5 echoes, 2 jobs failing all 4 attempts, a chain ping -> ping, a sleep
    echoes = [enqueue("examples.echo", {"n": n}) for n in range(5)]
    failing = [enqueue("examples.fail", {"times": 100}) for _ in range(2)]
    chain = start_chain([Step("examples.ping", {}), Step("examples.ping", {})])
    sleeper = enqueue("examples.sleep", {"seconds": 30})
    wait_for(lambda: status(sleeper.pk) == Status.RUNNING, 30, what="the sleep to run")

    # when it runs, the scrape shows it running
    # (the other process may be running one of the others at that instant: only the sleep is sure)
    assert values(scrape()["conveyor_jobs_running"]).get(("default", "examples.sleep")) == 1.0
    time.sleep(0.6)
    assert control.cancel(Job.objects.get(pk=sleeper.pk)) is True  # a running job: asked to stop
    wait_job(sleeper.pk, Status.CANCELLED, 20)
    for job in echoes:
        wait_job(job.pk, Status.SUCCEEDED, 20)
    for job in failing:
        wait_job(job.pk, Status.DEAD, 30)
    wait_for(lambda: Job.objects.filter(chain_id=chain.pk, status=Status.SUCCEEDED).count() == 2, 20, what="the chain to end")

    # then the counters say exactly what ended, by type and outcome
    metrics = wait_for(
        lambda: (m := scrape()) and values(m["conveyor_jobs_finished"], "_total").get(("dead", "examples.fail")) == 2 and m,
        5, what="the last outcome's metrics",
    )
    assert values(metrics["conveyor_jobs_finished"], "_total") == {
        ("succeeded", "examples.echo"): 5.0,
        ("failed", "examples.fail"): 6.0,  # attempts 1-3 of each, retried
        ("dead", "examples.fail"): 2.0,
        ("succeeded", "examples.ping"): 2.0,
        ("cancelled", "examples.sleep"): 1.0,
    }
    # one run time and one queue wait per claim
    runs = {"examples.echo": 5.0, "examples.fail": 8.0, "examples.ping": 2.0, "examples.sleep": 1.0}
    assert values(metrics["conveyor_job_run_seconds"], "_count") == {(t,): n for t, n in runs.items()}
    assert values(metrics["conveyor_job_queue_wait_seconds"], "_count") == {(t,): n for t, n in runs.items()}
    # the chain's second step was handed off once
    assert values(metrics["conveyor_chain_handoff_seconds"], "_count") == {("examples.ping",): 1.0}
    for name in ("conveyor_job_run_seconds", "conveyor_job_queue_wait_seconds", "conveyor_chain_handoff_seconds"):
        for (type_name,), count in values(metrics[name], "_count").items():
            buckets = {float(le): v for (le,), v in values(metrics[name], "_bucket", type=type_name).items()}
            bounds = sorted(buckets)
            assert bounds[-1] == float("inf") and buckets[float("inf")] == count, (name, type_name, buckets)
            assert all(buckets[a] <= buckets[b] for a, b in zip(bounds, bounds[1:])), (name, type_name, buckets)
    # the sleep ran at least 0.6 s before its cancel: nothing in the buckets below that
    sleep_buckets = values(metrics["conveyor_job_run_seconds"], "_bucket", type="examples.sleep")
    assert sleep_buckets[("0.5",)] == 0.0 and sleep_buckets[("+Inf",)] == 1.0
    assert values(metrics["conveyor_job_run_seconds"], "_sum")[("examples.sleep",)] >= 0.6
    # an echo takes well under 5 s
    assert values(metrics["conveyor_job_run_seconds"], "_bucket", type="examples.echo")[("5.0",)] == 5.0
    # every queue is there, and empty now
    depths = values(metrics["conveyor_queue_depth"])
    assert set(depths) == {(q,) for q in registry.queues()} and set(depths.values()) == {0.0}
    assert values(metrics["conveyor_jobs_running"]) == {}

    # and the worker's JSON log line of each failing job's death carries its ids
    worker.stop()
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    for job in failing:
        [death] = [line for line in lines if line.get("job") == job.pk and line["message"].endswith(" dead")]
        assert death["level"] == "INFO" and death["logger"] == "conveyor.runner"
        assert (death["job_type"], death["queue"], death["attempt"], death["chain"]) == ("examples.fail", "default", 4, None)
        assert "metrics@test" in death["worker"], death
        assert death["time"].endswith("+00:00")
