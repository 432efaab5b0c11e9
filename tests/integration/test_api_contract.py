"""The HTTP API keeps its contract (issue 11): each case an outside fuzzer found is a 400 naming the
field (never a 500), every error under /api/ is JSON, pages are capped, the catalog names every
type and subscriber, and only public job types are enqueueable over HTTP.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest
from django.test import Client
from django.utils import timezone

from jobs.models import Job
from subscribers.models import Event
from tests.factories import api_token

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def client() -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {api_token()}")


def post_raw(client: Client, path: str, body: str):
    return client.post(path, body, content_type="application/json")


# --- What PostgreSQL cannot store, what JSON cannot carry, what a bigint cannot hold ----------------

NUL = "\\u0000"
SURROGATE = "\\ud800"


@pytest.mark.parametrize(
    "path", ["/api/jobs", "/api/queues/default/pause", "/auth/token"],
)
def test_a_field_name_with_a_nul_is_named_escaped_as_the_schema_promises(client, path):
    # schemathesis: unknown fields named with a NUL were echoed raw in `detail` and `fields`,
    # where the OpenAPI document says no string of the answer holds one
    response = post_raw(client, path, f'{{"type": "examples.echo", "a{NUL}b": 1, "c{NUL}": 2}}')
    assert response.status_code == 400, response.content
    body = response.json()
    assert "\x00" not in json.dumps(body, ensure_ascii=False) and "\x00" not in body["detail"]
    assert "a\\u0000b" in body["fields"] and "a\\u0000b" in body["detail"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/jobs", f'{{"type": "examples.echo", "input": {{"a": "x{NUL}y"}}}}', "input"),
        ("/api/jobs", f'{{"type": "examples.echo", "input": {{"k{NUL}": 1}}}}', "input"),
        ("/api/jobs", f'{{"type": "notifications.send-email", "input": {{"to": "a@b.co", "subject": "s{NUL}"}}}}', "input.subject"),
        ("/api/jobs", f'{{"type": "examples.echo", "idempotency_key": "k{NUL}"}}', "idempotency_key"),
        ("/api/jobs", f'{{"type": "examples.echo", "input": {{"a": "{SURROGATE}"}}}}', "input"),
        ("/api/chains", f'{{"steps": [{{"type": "examples.echo", "input": {{"a": "{NUL}"}}}}]}}', "steps.0.input"),
        ("/api/events", f'{{"name": "order.placed", "data": {{"a": "{NUL}"}}}}', "data"),
        ("/api/events", f'{{"name": "order.placed", "key": "k{NUL}"}}', "key"),
        ("/api/jobs", '{"type": "examples.echo", "input": {"a": NaN}}', "input"),
        ("/api/jobs", '{"type": "examples.echo", "input": {"a": Infinity}}', "input"),
        ("/api/jobs", '{"type": "examples.echo", "input": {"a": 1e400}}', "input"),
        ("/api/jobs", '{"type": "examples.sleep", "input": {"seconds": -Infinity}}', "input.seconds"),
        ("/api/jobs", '{"type": "examples.echo", "priority": 1e400}', "priority"),
        ("/api/jobs", '{"type": "examples.sleep", "input": {"seconds": false}}', "input.seconds"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(client, path, body, field):
    response = post_raw(client, path, body)
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/json")
    assert any(name == field or name.startswith(field + ".") for name in response.json()["fields"]), response.json()
    assert Job.objects.count() == 0 and Event.objects.count() == 0


def test_a_run_after_with_an_offset_postgresql_refuses_is_stored_in_utc(client):
    # PostgreSQL takes offsets up to 15:59; Python (and RFC 3339) up to 23:59 (a time to come: a
    # past one is stored as now)
    response = client.post(
        "/api/jobs", {"type": "examples.echo", "run_after": "2099-01-01T00:00:00+23:59"}, content_type="application/json"
    )
    assert response.status_code == 201 and response.json()["run_after"] == "2098-12-31T00:01:00Z"


def test_a_run_after_in_the_past_means_now_and_the_job_says_so(client):
    before = timezone.now()
    response = client.post(
        "/api/jobs", {"type": "examples.echo", "run_after": "1970-01-01T00:00:00Z"}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["run_after"] == job["created_at"] and dt.datetime.fromisoformat(job["run_after"]) >= before - dt.timedelta(seconds=5)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("type=a%00b", "type"),
        ("chain=99999999999999999999", "chain"),
        ("before=99999999999999999999", "before"),
        ("limit=1000000", "limit"),
        ("limit=0", "limit"),
    ],
)
def test_bad_list_parameters_are_a_400_naming_them(client, query, field):
    response = client.get(f"/api/jobs?{query}")
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]


def test_event_filters_refuse_nul(client):
    response = client.get("/api/events?key=a%00b")
    assert response.status_code == 400 and "key" in response.json()["fields"]


@pytest.mark.parametrize("path", ["/api/jobs/99999999999999999999", "/api/events/99999999999999999999", "/api/chains/99999999999999999999"])
def test_an_id_past_bigint_is_a_400(client, path):
    response = client.get(path)
    assert response.status_code == 400 and response["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("get", "/api/jobs/abc", 404), ("get", "/api/nothing", 404), ("delete", "/api/jobs", 405), ("put", "/api/types", 405)],
)
def test_every_error_under_api_is_json(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json") and "detail" in response.json()


# --- Pages ------------------------------------------------------------------------------------------


def test_pages_are_capped_and_continue_by_id_without_counting(client):
    for n in range(5):
        client.post("/api/jobs", {"type": "examples.echo", "input": {"n": n}}, content_type="application/json")
    seen, before = [], ""
    for _ in range(5):
        page = client.get(f"/api/jobs?limit=2{before}").json()
        assert set(page) == {"items", "next"}  # no count of the whole table
        seen += [job["input"]["n"] for job in page["items"]]
        if page["next"] is None:
            break
        before = f"&before={page['next']}"
    assert seen == [4, 3, 2, 1, 0]
    assert client.get("/api/jobs?limit=201").status_code == 400
    assert client.get("/api/jobs?limit=200").status_code == 200


# --- The catalog and public types -------------------------------------------------------------------


def test_the_catalog_lists_each_job_type_with_its_input_schema(client):
    types = {t["name"]: t for t in client.get("/api/types").json()}
    resize = types["images.resize"]
    assert (resize["queue"], resize["public"], resize["retries"], resize["timeout"]) == ("images", True, 3, 120)
    assert set(resize["input_schema"]["properties"]) >= {"width", "height"}
    cleanup = types["conveyor.cleanup"]
    assert cleanup["public"] is False and cleanup["schedule"]["every"] == 60
    assert types["deliver:shop.audit"]["public"] is False


def test_the_catalog_lists_each_subscriber_and_its_pattern(client):
    subscribers = {s["name"]: s for s in client.get("/api/subscribers").json()}
    assert subscribers["shop.audit"] == {"name": "shop.audit", "pattern": "order.*", "queue": "default", "job_type": "deliver:shop.audit"}


@pytest.mark.parametrize("type_name", ["conveyor.cleanup", "deliver:shop.audit", "examples.nightly-report"])
def test_platform_and_delivery_types_are_not_enqueueable_over_http(client, type_name):
    job = client.post("/api/jobs", {"type": type_name}, content_type="application/json")
    chain = client.post("/api/chains", {"steps": [{"type": type_name}]}, content_type="application/json")
    assert job.status_code == 400 and "type" in job.json()["fields"]
    assert chain.status_code == 400 and "steps.0.type" in chain.json()["fields"]
    assert Job.objects.count() == 0


def test_the_openapi_document_names_every_public_type_and_each_route_its_statuses(client):
    schema = client.get("/api/openapi.json").json()
    body = schema["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    mapping = body["discriminator"]["mapping"]
    assert "images.resize" in mapping and "conveyor.cleanup" not in mapping
    resize = schema["components"]["schemas"][mapping["images.resize"].rsplit("/", 1)[1]]
    assert resize["properties"]["type"]["const"] == "images.resize"
    responses = {
        (path, method): set(operation["responses"])
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }
    assert responses[("/api/jobs", "get")] == {"200", "400", "401", "403", "414"}
    assert responses[("/api/jobs/{job_id}/cancel", "post")] == {"200", "202", "400", "401", "403", "404", "409", "414"}
    assert "409" not in responses[("/api/events/{event_id}", "get")] and "413" not in responses[("/api/jobs", "get")]
    strings = json.dumps(schema)
    assert '"pattern": "^[^\\u0000]*$"' in strings  # storable strings, said in the document
