"""The sample project's own tests, as Celery users write them: the tasks are called and their
results read through Celery's API only, against running workers (Celery's testing guide: a real
worker, not eager mode). They do not change when tasks.py's one line is switched to
`from conveyor_celery import shared_task`; tests/acceptance/test_from_celery_live.py runs them on
real Conveyor workers."""
import pytest
from celery import chain, chord, group
from celery.exceptions import TimeoutError

from .tasks import add, charge, div, fetch, mul, resize, xsum


def test_add():
    assert add.delay(4, 4).get(timeout=20) == 8


def test_apply_async_with_args_and_kwargs():
    result = mul.apply_async((3,), {"y": 5})
    assert result.get(timeout=20) == 15
    assert result.state == "SUCCESS"
    assert result.successful()


def test_a_failing_task_raises_its_exception():
    result = div.delay(1, 0)
    with pytest.raises(ZeroDivisionError):
        result.get(timeout=20)
    assert result.failed()
    assert result.state == "FAILURE"
    assert isinstance(result.get(propagate=False, timeout=5), ZeroDivisionError)
    assert "ZeroDivisionError" in result.traceback


def test_autoretry_for_with_backoff():
    result = fetch.delay("https://example.com", 2)
    assert result.get(timeout=30) == {"url": "https://example.com", "id": result.id, "retries": 2}


def test_autoretry_gives_up_after_max_retries():
    with pytest.raises(ConnectionError):
        fetch.delay("https://down.example.com", 10).get(timeout=40)


def test_retry_with_countdown():
    assert charge.delay(7, 1).get(timeout=20) == {"order": 7, "retries": 1}
    with pytest.raises(ValueError):
        charge.delay(8, 5).get(timeout=20)


def test_routed_task():
    assert resize.delay(64).get(timeout=20) == {"width": 64, "queue": "images"}


def test_get_times_out():
    result = add.apply_async((1, 1), countdown=30)
    with pytest.raises(TimeoutError):
        result.get(timeout=0.5)
    result.revoke()


def test_canvas_chain():
    # the canvas guide: (4 + 4) * 8
    assert chain(add.s(4, 4), mul.s(8))().get(timeout=20) == 64
    assert (add.s(2, 2) | mul.s(8)).delay().get(timeout=20) == 32
    assert chain(add.s(4, 4), mul.s(8), add.si(1, 1)).apply_async().get(timeout=20) == 2


def test_canvas_group():
    assert group(add.s(i, i) for i in range(10))().get(timeout=20) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]


def test_canvas_chord():
    assert chord((add.s(i, i) for i in range(10)), xsum.s())().get(timeout=30) == 90
    assert (group(add.s(i, i) for i in range(5)) | xsum.s()).delay().get(timeout=30) == 20
