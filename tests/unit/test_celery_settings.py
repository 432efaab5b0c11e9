"""Celery settings chosen on purpose, checked where the worker reads them (the app's config)."""
from __future__ import annotations

from django.conf import settings

from project.celery import app


def test_worker_cancel_long_running_tasks_on_connection_loss_is_set_false_on_purpose():
    # Set explicitly (Celery 5 warns it will default to True in 6.0): a running job is fenced by
    # its attempt, so a Redis loss lets it finish and record once instead of cancelling it.
    assert settings.CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS is False
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False


def test_one_message_per_pool_process_acked_after_the_job():
    """celery#1933 (short tasks wait behind a long one a busy pool process prefetched) and
    celery#3541 (prefetched and running tasks lost with their worker): a pool process holds only
    the message it runs, and acks it once the job has ended (tests/acceptance/
    test_upstream_failure_modes.py runs both failure modes against real workers)."""
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True


def test_inspect_conf_and_report_show_no_password_of_any_url():
    """`celery inspect conf` (and Flower's worker page, `GET /api/workers`, which asks it) listed
    REDIS_URL, CELERY_BROKER_URL and the cache's LOCATION with their passwords: Celery masks only
    settings named KEY/SECRET/PASS/TOKEN/DATABASE and `broker_url` by that exact name."""
    from types import SimpleNamespace

    from celery import Celery
    from celery.worker.control import Panel

    # given a configuration like production's: a Redis password in three settings, a sentinel's
    configured = Celery("audit", set_as_current=False)
    configured.conf.update(
        REDIS_URL="rediss://default:pw-one@redis.example:6380/0",
        CELERY_BROKER_URL="redis://:pw-two@redis.example:6379/0",
        CACHES={"default": {"LOCATION": "redis://:pw-three@redis.example/1"}},
        SENTINELS=["sentinel://:pw-four@s1:26379,s2:26379/mymaster?sentinel_password=pw-five&db=0"],
    )
    state = SimpleNamespace(app=configured)
    # when a worker answers `inspect conf` and `inspect report` (the commands the worker runs)
    answers = str(Panel.data["conf"](state)) + str(Panel.data["dump_conf"](state)) + str(Panel.data["report"](state))
    # then no password is in them, and the rest of each URL is
    assert not [pw for pw in ("pw-one", "pw-two", "pw-three", "pw-four", "pw-five") if pw in answers], answers
    assert "rediss://default:********@redis.example:6380/0" in answers
    assert "sentinel_password=********&db=0" in answers and "CACHES" in answers
    # and the platform's own configuration (lazy objects among its settings) is answered whole
    own = Panel.data["conf"](SimpleNamespace(app=app))
    assert "error" not in own and own["REDIS_URL"] == settings.REDIS_URL and own["SECRET_KEY"] == "********"
