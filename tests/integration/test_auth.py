"""Issue 13: JWTs from POST /auth/token, scoped and expiring API tokens, the user and token
commands, the admin's token list. Real PostgreSQL (axes' failed-login rows too) and Redis."""
from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import time

import jwt
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from api import scopes
from api.auth import issue_jwt, issue_token
from api.models import ApiToken
from tests.factories import grant
from tests.support import redis_client

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

_ips = itertools.count(1)


@pytest.fixture(autouse=True)
def _clean_redis():
    """Jobs enqueued here leave wake-ups in Redis, and attempts their counters: none outlive a test."""
    yield
    redis_client().flushall()


PASSWORD = "a-long-password"


def _client() -> Client:
    """A client from its own address: failed logins are counted per (address, account)."""
    return Client(REMOTE_ADDR=f"10.13.{int(time.time()) % 200}.{next(_ips)}")


def _user(email: str | None = None, staff: bool = True, families: tuple[str, ...] = scopes.FAMILIES):
    """A user holding the permissions behind `families` (every scope by default)."""
    email = email or f"u{time.time_ns()}@example.com"
    user = get_user_model().objects.create_user(username=email, email=email, password=PASSWORD, is_staff=staff)
    return grant(user, *families)


def _exchange(client: Client, email: str, password: str = PASSWORD, **extra: object):
    body = {"email": email, "password": password, **extra}
    return client.post("/auth/token", data=json.dumps(body), content_type="application/json")


def _bearer(token: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def _enqueue(client: Client):
    body = json.dumps({"type": "examples.echo", "input": {}})
    return client.post("/api/jobs", data=body, content_type="application/json")


# --- POST /auth/token -----------------------------------------------------------------------------


def test_token_exchange_gives_a_jwt_with_sub_exp_iat_scope_that_the_api_takes():
    user = _user()
    response = _exchange(_client(), user.email)
    assert response.status_code == 200, response.content
    body = response.json()
    # without `scope`: every scope the user's permissions allow (here all four)
    assert body["token_type"] == "bearer" and body["scope"] == "events:emit jobs:read jobs:write operate"
    assert body["expires_in"] == settings.JWT_TTL_SECONDS == 900
    claims = jwt.decode(body["access_token"], settings.JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(user.pk) and claims["scope"] == body["scope"]
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 10
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    api = _bearer(body["access_token"])
    assert api.get("/api/jobs").status_code == 200
    assert _enqueue(api).status_code == 201


def test_wrong_password_or_unknown_email_is_401():
    user = _user()
    client = _client()
    response = _exchange(client, user.email, "not-the-password")
    assert response.status_code == 401 and response.json()["detail"] == "wrong email or password"
    assert _exchange(client, "nobody@example.com").status_code == 401


def test_inactive_user_gets_no_token():
    user = _user()
    user.is_active = False
    user.save()
    assert _exchange(_client(), user.email).status_code == 401


def test_bad_body_is_400_naming_the_field():
    response = _client().post("/auth/token", data=json.dumps({"email": "a@b.c"}), content_type="application/json")
    assert response.status_code == 400
    assert "password" in response.json()["fields"]


# The lockout after failed logins (django-axes, per client address and account, behind the
# proxy too): tests/integration/test_logins.py.


def test_auth_openapi_document_names_the_route_and_its_answers():
    document = Client().get("/auth/openapi.json").json()
    operation = document["paths"]["/auth/token"]["post"]
    assert set(operation["responses"]) == {"200", "400", "401", "403", "429"}
    assert "security" not in operation or not operation["security"]


# --- JWTs on /api/ ----------------------------------------------------------------------------------


def test_expired_jwt_is_401():
    user = _user()
    now = int(time.time())
    token = jwt.encode({"sub": str(user.pk), "iat": now - 1000, "exp": now - 100, "scope": "write"},
                       settings.JWT_SECRET, algorithm="HS256")
    assert _bearer(token).get("/api/jobs").status_code == 401


def test_tampered_jwt_is_401():
    user = _user(staff=False)
    token = issue_jwt(user, "read")
    header, claims, signature = token.split(".")
    forged = jwt.encode({**jwt.decode(token, options={"verify_signature": False}), "scope": "write"},
                        "another-secret-of-32-characters-long!", algorithm="HS256").split(".")[1]
    assert _bearer(f"{header}.{forged}.{signature}").get("/api/jobs").status_code == 401
    assert _bearer(token[:-2] + ("AA" if not token.endswith("AA") else "BB")).get("/api/jobs").status_code == 401
    assert _bearer(token).get("/api/jobs").status_code == 200


def test_jwt_signed_with_none_or_missing_claims_is_401():
    user = _user()
    now = int(time.time())
    unsigned = jwt.encode({"sub": str(user.pk), "iat": now, "exp": now + 60, "scope": "write"}, None, algorithm="none")
    assert _bearer(unsigned).get("/api/jobs").status_code == 401
    no_scope = jwt.encode({"sub": str(user.pk), "iat": now, "exp": now + 60}, settings.JWT_SECRET, algorithm="HS256")
    assert _bearer(no_scope).get("/api/jobs").status_code == 401


def test_jwt_of_a_deactivated_user_is_401():
    user = _user()
    token = issue_jwt(user)
    user.is_active = False
    user.save()
    assert _bearer(token).get("/api/jobs").status_code == 401


def test_read_scoped_jwt_reads_but_cannot_write():
    user = _user()
    response = _exchange(_client(), user.email, scope="read")  # the name before issue 22
    assert response.json()["scope"] == "jobs:read"
    api = _bearer(response.json()["access_token"])
    assert api.get("/api/jobs").status_code == 200
    refused = _enqueue(api)
    assert refused.status_code == 403 and "needs the scope jobs:write" in refused.json()["detail"]


# --- API tokens: scope and expiry ---------------------------------------------------------------


def test_read_scoped_token_is_refused_with_403_on_every_write_route():
    api = _bearer(issue_token(_user(), scope="read"))
    assert api.get("/api/jobs").status_code == 200
    assert api.get("/api/types").status_code == 200
    for path in ("/api/jobs", "/api/chains", "/api/events", "/api/jobs/1/cancel", "/api/jobs/1/retry"):
        response = api.post(path, data="{}", content_type="application/json")
        assert response.status_code == 403, (path, response.content)


def test_write_token_writes():
    assert _enqueue(_bearer(issue_token(_user(), scope="write"))).status_code == 201


def test_expired_token_is_401_and_an_unexpired_one_works():
    user = _user()
    expired = issue_token(user, expires_in=dt.timedelta(seconds=-1))
    assert _bearer(expired).get("/api/jobs").status_code == 401
    fresh = issue_token(user, expires_in=dt.timedelta(days=1))
    assert _bearer(fresh).get("/api/jobs").status_code == 200


def test_last_used_is_recorded_once_a_minute():
    token = issue_token(_user())
    row = ApiToken.objects.latest("id")
    assert row.last_used_at is None
    _bearer(token).get("/api/jobs")
    row.refresh_from_db()
    first = row.last_used_at
    assert first is not None
    _bearer(token).get("/api/jobs")
    row.refresh_from_db()
    assert row.last_used_at == first


def test_every_route_documents_403():
    # every route needs a scope (a token without it: 403), reads included since issue 22
    document = Client().get("/api/openapi.json").json()
    operations = [(path, op) for path, ops in document["paths"].items() for op in ops.values()]
    assert len(operations) == 23  # 13, the three live streams, the six of queues and pauses (issue 27), the scale signal (issue 29)
    for path, op in operations:
        assert "403" in op["responses"], path


def test_token_command_scope_and_expiry():
    user = _user()
    out = io.StringIO()
    call_command("token", "--email", user.email, "--scope", "read", "--expires-in", "3", stdout=out)
    token = out.getvalue().strip()
    row = ApiToken.objects.get(user=user)
    assert row.scope == "jobs:read"
    assert abs((row.expires_at - timezone.now()) - dt.timedelta(days=3)) < dt.timedelta(minutes=1)
    assert _bearer(token).get("/api/jobs").status_code == 200
    assert _enqueue(_bearer(token)).status_code == 403
    out = io.StringIO()
    call_command("token", "--email", user.email, stdout=out)
    newest = ApiToken.objects.filter(user=user).latest("id")
    assert newest.scope == "events:emit jobs:read jobs:write operate" and newest.expires_at is None
    with pytest.raises(CommandError):
        call_command("token", "--email", user.email, "--expires-in", "0")
    with pytest.raises(CommandError):
        call_command("token", "--email", user.email, "--scope", "admin")


# --- manage.py user -----------------------------------------------------------------------------


def test_user_command_takes_the_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONVEYOR_USER_PASSWORD", "from-the-environment")
    out = io.StringIO()
    call_command("user", "--email", "env@example.com", "--staff", stdout=out)
    assert out.getvalue().strip() == "created user env@example.com: staff (admin, with the permissions granted to it)"
    user = get_user_model().objects.get(email="env@example.com")
    assert user.check_password("from-the-environment") and user.is_staff


def test_user_command_prompts_when_stdin_is_a_terminal(monkeypatch):
    monkeypatch.delenv("CONVEYOR_USER_PASSWORD", raising=False)
    answers = iter(["typed-at-the-prompt", "typed-at-the-prompt"])
    prompts = []
    monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or next(answers))

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty())
    out = io.StringIO()
    call_command("user", "--email", "tty@example.com", "--no-staff", stdout=out)
    assert len(prompts) == 2
    assert out.getvalue().strip() == "created user tty@example.com: not staff (API only)"
    user = get_user_model().objects.get(email="tty@example.com")
    assert user.check_password("typed-at-the-prompt") and not user.is_staff and not user.is_superuser


def test_user_command_without_any_password_source_fails(monkeypatch):
    monkeypatch.delenv("CONVEYOR_USER_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO())  # not a terminal
    with pytest.raises(CommandError, match="CONVEYOR_USER_PASSWORD"):
        call_command("user", "--email", "none@example.com")
    assert not get_user_model().objects.filter(email="none@example.com").exists()


def test_user_command_argv_password_still_works_and_updates():
    out = io.StringIO()
    call_command("user", "--email", "argv@example.com", "--password", "a-long-password", "--superuser", stdout=out)
    call_command("user", "--email", "argv@example.com", "--password", "another-password", stdout=out)
    assert out.getvalue().splitlines() == [
        "created user argv@example.com: superuser (admin, every permission)",
        "updated user argv@example.com: superuser (admin, every permission)",
    ]
    assert get_user_model().objects.get(email="argv@example.com").check_password("another-password")


# --- The admin ----------------------------------------------------------------------------------


def test_admin_lists_tokens_with_user_scope_dates_and_revokes_them():
    admin = get_user_model().objects.create_superuser("root@example.com", "root@example.com", PASSWORD)
    owner = _user("owner@example.com")
    token = issue_token(owner, scope="read", expires_in=dt.timedelta(days=2))
    _bearer(token).get("/api/jobs")
    row = ApiToken.objects.get(user=owner)
    browser = Client()
    browser.force_login(admin)
    page = browser.get("/admin/api/apitoken/")
    assert page.status_code == 200
    html = page.content.decode()
    for text in ("owner@example.com", "read", "Expires at", "Last used at", "Created at", "active"):
        assert text in html, text
    assert "Revoke the selected tokens" in html
    response = browser.post(
        "/admin/api/apitoken/", {"action": "revoke", "_selected_action": [row.pk], "index": 0}, follow=True
    )
    assert response.status_code == 200
    assert [str(m) for m in response.context["messages"]] == ["revoked 1 token(s)"]
    assert not ApiToken.objects.filter(pk=row.pk).exists()
    assert _bearer(token).get("/api/jobs").status_code == 401


def test_errors_under_auth_are_json_too():
    missing = Client().get("/auth/nothing-here")
    assert missing.status_code == 404 and missing["Content-Type"].startswith("application/json")
    wrong_method = Client().get("/auth/token")
    assert wrong_method.status_code == 405 and wrong_method.json()["detail"]
    malformed = _client().post("/auth/token", data=b'{"email": ', content_type="application/json")
    assert malformed.status_code == 400 and malformed.json()["detail"]
