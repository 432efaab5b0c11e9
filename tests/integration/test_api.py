"""The HTTP API's contract: bad input is a 400/401/404/413 JSON answer naming the problem."""
from __future__ import annotations

import pytest
from django.test import Client

from jobs.models import Chain, Job
from tests.support import queue_length

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.mark.usefixtures("empty_redis")  # the queue holds this test's message only
def test_enqueue_writes_the_row_and_publishes_its_id(api):
    status, job = api("post", "/jobs", {"type": "examples.sleep", "input": {"seconds": 1}})
    assert status == 201
    assert job["status"] == "pending" and job["queue"] == "default" and job["input"] == {"seconds": 1.0}
    assert Job.objects.filter(pk=job["id"]).exists()
    assert queue_length("default") == 1


def test_unknown_type_is_400_naming_type(api):
    status, body = api("post", "/jobs", {"type": "nope.nothing", "input": {}})
    assert status == 400
    assert "type" in body["fields"]


def test_input_failing_its_schema_is_400_naming_the_field(api):
    status, body = api("post", "/jobs", {"type": "images.resize", "input": {"width": -1}})
    assert status == 400
    assert "input.width" in body["fields"]
    assert Job.objects.count() == 0


def test_unknown_field_is_400(api):
    status, body = api("post", "/jobs", {"type": "examples.echo", "input": {}, "colour": "red"})
    assert status == 400
    assert "colour" in body["fields"]


def test_malformed_json_is_400(api):
    status, body = api("post", "/jobs", raw=b'{"type": "examples.echo", ')
    assert status == 400
    assert body["detail"]


def test_missing_type_is_400(api):
    status, body = api("post", "/jobs", {"input": {}})
    assert status == 400
    assert "type" in body["fields"]


def test_body_over_one_mib_is_413(api):
    status, body = api("post", "/jobs", {"type": "examples.echo", "input": {"blob": "x" * (1024 * 1024 + 10)}})
    assert status == 413
    assert "1 MiB" in body["detail"]


def test_missing_or_wrong_token_is_401():
    client = Client()
    assert client.get("/api/jobs").status_code == 401
    response = Client(HTTP_AUTHORIZATION="Bearer cvy_wrong").get("/api/jobs")
    assert response.status_code == 401
    assert "token" in response.json()["detail"]


def test_unknown_ids_are_404(api):
    assert api("get", "/jobs/987654")[0] == 404
    assert api("get", "/chains/987654")[0] == 404
    assert api("post", "/jobs/987654/cancel")[0] == 404
    assert api("post", "/jobs/987654/retry")[0] == 404


def test_idempotency_key_returns_the_same_job(api):
    first = api("post", "/jobs", {"type": "examples.echo", "input": {"a": 1}, "idempotency_key": "order-7"})
    second = api("post", "/jobs", {"type": "examples.echo", "input": {"a": 1}, "idempotency_key": "order-7"})
    assert first[1]["id"] == second[1]["id"]
    assert Job.objects.count() == 1


def test_list_filters_and_paginates(api):
    for n in range(3):
        api("post", "/jobs", {"type": "examples.echo", "input": {"n": n}})
    api("post", "/jobs", {"type": "examples.sleep", "input": {"seconds": 0}})
    status, page = api("get", "/jobs?type=examples.echo&limit=2")
    assert status == 200
    assert [job["input"]["n"] for job in page["items"]] == [2, 1] and page["next"] == page["items"][-1]["id"]
    status, rest = api("get", f"/jobs?type=examples.echo&limit=2&before={page['next']}")
    assert [job["input"]["n"] for job in rest["items"]] == [0] and rest["next"] is None
    assert api("get", "/jobs?status=bogus")[0] == 400


def test_chain_validates_every_step_up_front(api):
    status, body = api(
        "post", "/chains", {"steps": [{"type": "examples.echo", "input": {}}, {"type": "images.resize", "input": {"width": 0}}]}
    )
    assert status == 400
    assert "steps.1.input.width" in body["fields"]
    assert Chain.objects.count() == 0 and Job.objects.count() == 0


def test_chain_starts_with_its_first_step(api):
    status, chain = api(
        "post", "/chains", {"steps": [{"type": "examples.echo", "input": {"a": 1}}, {"type": "examples.ping", "input": {}}]}
    )
    assert status == 201
    assert [s["status"] for s in chain["steps"]] == ["pending", "waiting"]
    assert Job.objects.filter(chain_id=chain["id"]).count() == 1


def test_cancel_pending_then_retry(api):
    _, job = api("post", "/jobs", {"type": "examples.echo", "input": {}})
    status, cancelled = api("post", f"/jobs/{job['id']}/cancel")
    assert status == 200 and cancelled["status"] == "cancelled"
    assert api("post", f"/jobs/{job['id']}/cancel")[0] == 409
    status, retried = api("post", f"/jobs/{job['id']}/retry")
    assert status == 200 and retried["status"] == "pending"


def test_openapi_schema_is_served():
    response = Client().get("/api/openapi.json")
    assert response.status_code == 200
    assert "/api/jobs" in response.json()["paths"]
