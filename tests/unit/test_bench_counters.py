"""bench.cluster's CPU and core-wait columns: differences of per-process and per-thread counters."""

from bench.cluster import cpu_spent


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
