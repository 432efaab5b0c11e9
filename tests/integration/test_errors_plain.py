"""Errors in plain words (issue 26), one shape everywhere (docs/errors.md): `detail`, a sentence,
and `fields` only when fields are at fault, never `null`; the same 404 words on every route."""
from __future__ import annotations

import json

import pytest
from django.test import Client

from tests.support import api_client

pytestmark = pytest.mark.django_db


def test_an_unknown_job_type_is_named_with_its_close_matches_and_the_catalog(api):
    # when a job of a type nobody declared is enqueued (a typo of examples.echo)
    status, body = api("post", "/jobs", {"type": "examples.ecko", "input": {}})
    # then the answer says so in words, with the close matches and where the list is
    assert status == 400
    assert body["detail"].startswith("unknown job type 'examples.ecko'; did you mean 'examples.echo'"), body
    assert "GET /api/types" in body["detail"]
    assert body["fields"] == {"type": body["detail"]}
    assert "Input tag" not in json.dumps(body)


def test_an_unknown_job_type_far_from_any_has_no_close_match_but_the_catalog(api):
    status, body = api("post", "/jobs", {"type": "nope.nothing", "input": {}})
    assert status == 400
    assert body["detail"] == "unknown job type 'nope.nothing' (the job types: GET /api/types)"


def test_an_unknown_step_type_in_a_chain_names_the_step(api):
    status, body = api("post", "/chains", {"steps": [{"type": "examples.echo"}, {"type": "examples.pong"}]})
    assert status == 400
    assert body["fields"]["steps.1.type"].startswith("unknown job type 'examples.pong'; did you mean 'examples.ping'")
    assert body["detail"].startswith("steps.1.type: unknown job type 'examples.pong'")


def test_a_missing_type_says_the_field_type_is_required(api):
    status, body = api("post", "/jobs", {"input": {}})
    assert status == 400
    assert body["fields"] == {"type": "the field `type` is required: the name of a job type (GET /api/types)"}
    assert "discriminator" not in json.dumps(body)


def test_a_type_that_fans_out_as_a_groups_member_is_not_called_unknown(api):
    step = {"group": [{"type": "examples.fan-out", "input": {"n": 1}}]}
    status, body = api("post", "/chains", {"steps": [step]})
    assert status == 400
    assert body["fields"]["steps.0.group.0.type"] == (
        "job type 'examples.fan-out' cannot be used here (a group's member must not continue or fan out)"
    )


@pytest.mark.parametrize(
    ("path", "detail"),
    [("/api/jobs/987654321", "no job 987654321"), ("/api/chains/987654321", "no chain 987654321"),
     ("/api/events/987654321", "no event 987654321")],
)
def test_a_missing_row_is_404_in_the_same_words_on_every_route(api, path, detail):
    status, body = api("get", path.removeprefix("/api"))
    assert (status, body) == (404, {"detail": detail})


@pytest.mark.parametrize(("path", "docs"), [("/api/nope", "/api/docs"), ("/auth/nope", "/auth/docs")])
def test_a_path_no_route_answers_is_404_naming_it_and_the_routes(api, path, docs):
    response = Client().get(path)
    assert response.status_code == 404
    assert response.json() == {"detail": f"not found: no route {path} (the routes: {docs})"}


def test_auth_errors_carry_no_null_fields(django_user_model):
    # given a user, and a wrong password for it
    django_user_model.objects.create_user("plain@example.com", "plain@example.com", "a-good-password")
    response = Client().post("/auth/token", {"email": "plain@example.com", "password": "wrong"}, content_type="application/json")
    # then the 401 is the one error shape: a detail, no `fields` at all (never null)
    assert response.status_code == 401
    assert response.json() == {"detail": "wrong email or password"}
    # and a 400 names its fields
    missing = Client().post("/auth/token", {}, content_type="application/json")
    assert missing.status_code == 400
    assert set(missing.json()["fields"]) == {"email", "password"}
    assert missing.json()["detail"] == "invalid request: 2 fields are wrong (email, password)"


# --- The first minutes: pretty JSON when asked, the development catalog, a pasteable login --------


def test_pretty_indents_the_answer_and_a_strict_query_does_not_refuse_it():
    # given a route whose query schema refuses unknown parameters
    client = api_client()
    # when a person asks for the list with ?pretty
    response = client.get("/api/jobs?pretty&limit=2")
    # then it answers, indented, the parameter taken off before the route saw it
    assert response.status_code == 200, response.content
    assert response.content.startswith(b'{\n  "items": [')
    assert json.loads(response.content) == json.loads(client.get("/api/jobs?limit=2").content)
    # and without it the answer stays one line (programs)
    assert b"\n" not in client.get("/api/jobs?limit=2").content.strip()


def test_a_browser_gets_indented_json_errors_too():
    response = Client().get("/api/jobs", HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8")
    assert response.status_code == 401
    assert response.content.startswith(b'{\n  "detail": ')


def test_the_development_catalog_lists_no_benchmark_subscriber(api):
    status, subscribers = api("get", "/subscribers")
    assert status == 200
    names = [s["name"] for s in subscribers]
    assert "shop.audit" in names
    assert not [name for name in names if name.startswith("bench.")], names
    status, types = api("get", "/types")
    assert not [t["name"] for t in types if "bench." in t["name"]]


def test_the_readmes_login_survives_a_paste_its_password_from_the_environment_or_stdin(monkeypatch):
    import io

    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    # given a password in the environment (the README's block), stdin not a terminal (a paste)
    monkeypatch.setenv("CONVEYOR_USER_PASSWORD", "pasted-password")
    monkeypatch.setattr("sys.stdin", io.StringIO("the next pasted line\n"))
    call_command("user", "--email", "paste@example.com", "--superuser")
    user = get_user_model().objects.get(username="paste@example.com")
    assert user.check_password("pasted-password") and user.is_superuser
    # and a script's password on stdin, never on the command line
    monkeypatch.delenv("CONVEYOR_USER_PASSWORD")
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin-pw\nignored\n"))
    call_command("user", "--email", "paste@example.com", "--password-stdin")
    assert get_user_model().objects.get(username="paste@example.com").check_password("from-stdin-pw")



@pytest.mark.django_db
def test_a_database_error_in_the_token_check_is_503_to_retry_not_a_500():
    """PostgreSQL away or the server's pool busy past its timeout (bench.streams under load:
    `500 Internal Server Error` on 16% of 1,000 streams opening at once): the request did nothing,
    the client is told to retry. Django's own hook on the connection raises the error its
    driver would."""
    from django.db import OperationalError, connection

    def refuse(execute, sql, params, many, context):
        raise OperationalError("couldn't get a connection after 5.00 sec")

    client = api_client()
    with connection.execute_wrapper(refuse):
        response = client.get("/api/jobs/1")
    assert response.status_code == 503, response.content
    assert response["Retry-After"] == "1"
    assert response.json() == {
        "detail": "the database is unavailable or busy right now: nothing was done, try again in a moment"
    }


def test_the_address_start_prints_leads_a_browser_somewhere_and_the_icon_is_served(admin_client):
    # `make run` prints http://127.0.0.1:8000/: it was a bare 404, and every first admin page
    # logged a 404 for /favicon.ico in the browser's console
    root = Client().get("/")
    assert (root.status_code, root["Location"]) == (302, "/admin/")
    icon = Client().get("/favicon.ico")
    assert icon.status_code == 200 and icon["Content-Type"] == "image/svg+xml" and b"<svg" in icon.content
    # and the admin links no "View site" (there is none: it led to that 404)
    page = admin_client.get("/admin/")
    assert page.status_code == 200 and b"View site" not in page.content
