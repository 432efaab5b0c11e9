"""Issue 22: token scopes per family, bounded by the user's Django permissions; the API-token hash
key apart from the JWT signing key; a rotation window for the signing key. Real PostgreSQL and
Redis, the Django test client."""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import time

import jwt
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client, override_settings

from api import scopes
from api.auth import issue_jwt, issue_token
from api.models import ApiToken
from jobs.models import Job
from subscribers.models import Event
from tests.factories import grant
from tests.support import redis_client

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

PASSWORD = "a-long-password"
OLD_KEY = "the-signing-key-before-the-rotation-" + "k" * 20
NEW_KEY = "the-signing-key-after-the-rotation-" + "n" * 20


@pytest.fixture(autouse=True)
def _clean_redis():
    yield
    redis_client().flushall()


def _user(*families: str):
    email = f"s{time.time_ns()}@example.com"
    user = get_user_model().objects.create_user(username=email, email=email, password=PASSWORD)
    return grant(user, *families)


def _bearer(token: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def _post(client: Client, path: str, body: object):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def _mint(user, scope: str | None = None):
    body = {"email": user.email, "password": PASSWORD, **({"scope": scope} if scope is not None else {})}
    return _post(Client(REMOTE_ADDR=f"10.22.{time.time_ns() % 250}.{time.time_ns() % 250}"), "/auth/token", body)


def _refused(response, scope: str) -> None:
    assert response.status_code == 403, response.content
    assert scope in response.json()["detail"], response.json()


# --- A storefront's token ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["api token", "jwt"])
def test_storefront_token_emits_its_named_event_only_and_cannot_read_or_enqueue(kind):
    # given a storefront user allowed to emit events only, and its token for order.placed
    user = _user(scopes.EMIT)
    job = Job.objects.create(type="examples.echo", queue="default", status="pending")
    if kind == "api token":
        token = issue_token(user, "events:emit:order.placed")
    else:
        minted = _mint(user, "events:emit:order.placed")
        assert minted.status_code == 200, minted.content
        assert minted.json()["scope"] == "events:emit:order.placed"
        token = minted.json()["access_token"]
    shop = _bearer(token)
    # then it emits order.placed
    emitted = _post(shop, "/api/events", {"name": "order.placed", "data": {"order": 1}})
    assert emitted.status_code == 202, emitted.content
    # and not another event: 403 naming the scope that would
    _refused(_post(shop, "/api/events", {"name": "order.refunded", "data": {}}), "events:emit:order.refunded")
    assert list(Event.objects.values_list("name", flat=True)) == ["order.placed"]
    # and it reads nothing, enqueues nothing, operates nothing: 403 naming the scope needed
    for path in ("/api/jobs", f"/api/jobs/{job.pk}", "/api/events", "/api/types", "/api/subscribers"):
        _refused(shop.get(path), "jobs:read")
    jobs_before = Job.objects.count()
    _refused(_post(shop, "/api/jobs", {"type": "examples.echo", "input": {}}), "jobs:write")
    _refused(_post(shop, "/api/chains", {"steps": [{"type": "examples.echo"}]}), "jobs:write")
    _refused(_post(shop, f"/api/jobs/{job.pk}/cancel", {}), "operate")
    assert Job.objects.count() == jobs_before


def test_each_family_opens_its_own_routes_only():
    user = _user(*scopes.FAMILIES)
    job = Job.objects.create(type="examples.echo", queue="default", status="dead")
    routes = {
        scopes.EMIT: [("post", "/api/events", {"name": "order.placed"}, 202)],
        scopes.READ: [("get", "/api/jobs", None, 200), ("get", f"/api/jobs/{job.pk}", None, 200), ("get", "/api/types", None, 200),
                      ("get", "/api/events", None, 200), ("get", "/api/subscribers", None, 200)],
        scopes.WRITE: [("post", "/api/jobs", {"type": "examples.echo", "input": {}}, 201),
                       ("post", "/api/chains", {"steps": [{"type": "examples.echo"}]}, 201)],
        scopes.OPERATE: [("post", f"/api/jobs/{job.pk}/retry", {}, 200)],
    }
    tokens = {name: _bearer(issue_token(user, name)) for name in scopes.FAMILIES}
    for holder, client in tokens.items():
        for family, calls in routes.items():
            for method, path, body, ok in calls:
                response = _post(client, path, body) if method == "post" else client.get(path)
                if family == holder:
                    assert response.status_code == ok, (holder, path, response.content)
                else:
                    _refused(response, f"needs the scope {family}")
                if path.endswith("/retry") and family == holder:
                    Job.objects.filter(pk=job.pk).update(status="dead")  # to retry again


def test_the_permission_is_read_in_the_token_s_own_query():
    # a request's scope check costs no query of its own: the permission comes with the token row
    # (the JWT's user row), for a user holding it directly, through a group, or as a superuser
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    direct = _user(scopes.READ)
    grouped = _user()
    group = Group.objects.create(name=f"readers-{time.time_ns()}")
    grant(group, scopes.READ)  # a group's permissions, as the admin gives them
    grouped.groups.add(group)
    boss = get_user_model().objects.create_superuser(f"b{time.time_ns()}", f"b{time.time_ns()}@example.com", PASSWORD)
    for user in (direct, grouped, boss):
        for token in (issue_token(user, "jobs:read"), issue_jwt(user, "jobs:read")):
            client = _bearer(token)
            assert client.get("/api/types").status_code == 200  # last_used_at written once
            with CaptureQueriesContext(connection) as queries:
                assert client.get("/api/types").status_code == 200
            assert len(queries) == 1, [q["sql"] for q in queries]


# --- Minting is bounded by the user's permissions ---------------------------------------------


def test_a_user_without_the_permission_cannot_mint_jobs_write():
    # given a user who may read jobs and emit events, but not enqueue
    user = _user(scopes.READ, scopes.EMIT)
    # then POST /auth/token refuses jobs:write with 403 naming the scope and the permission
    response = _mint(user, "jobs:read jobs:write")
    assert response.status_code == 403, response.content
    assert "jobs:write" in response.json()["detail"] and "jobs.add_job" in response.json()["detail"]
    assert "jobs:write" in response.json()["fields"]["scope"]
    # and so does the old name that meant it
    assert _mint(user, "write").status_code == 403
    # and the token command, and the function
    with pytest.raises(CommandError, match="jobs:write"):
        call_command("token", "--email", user.email, "--scope", "jobs:write", stdout=io.StringIO())
    with pytest.raises(scopes.ScopeRefused, match="jobs:write"):
        issue_token(user, "jobs:write")
    assert not ApiToken.objects.filter(user=user).exists()
    # and without `scope` it gets what it may hold, nothing more
    granted = _mint(user)
    assert granted.status_code == 200 and granted.json()["scope"] == "events:emit jobs:read"
    # and a user with no permission at all gets no token
    assert _mint(_user()).status_code == 403


def test_an_unknown_scope_is_400_naming_the_field():
    user = _user(*scopes.FAMILIES)
    for scope in ("admin", "events:emit:Not A Name", "jobs:read jobs:everything", ""):
        response = _mint(user, scope)
        assert response.status_code == 400, (scope, response.content)
        assert "scope" in response.json()["fields"], response.json()


def test_a_permission_taken_away_takes_the_scope_from_existing_tokens():
    user = _user(scopes.READ, scopes.WRITE)
    api = _bearer(issue_token(user, "jobs:read jobs:write"))
    assert api.get("/api/jobs").status_code == 200
    user.user_permissions.clear()
    _refused(api.get("/api/jobs"), "jobs.view_job")


def test_token_command_takes_the_new_scopes_and_grant_gives_their_permissions():
    user = _user()
    out = io.StringIO()
    call_command("grant", "--email", user.email, "--scope", "events:emit:order.placed", "--scope", "jobs:read", stdout=out)
    assert "events:emit, jobs:read granted" in out.getvalue()
    out = io.StringIO()
    call_command("token", "--email", user.email, "--scope", "events:emit:order.placed jobs:read", stdout=out)
    assert ApiToken.objects.get(user=user).scope == "events:emit:order.placed jobs:read"
    shop = _bearer(out.getvalue().strip())
    assert shop.get("/api/jobs").status_code == 200
    assert _post(shop, "/api/events", {"name": "order.placed"}).status_code == 202
    call_command("grant", "--email", user.email, "--scope", "jobs:read", "--revoke", stdout=io.StringIO())
    _refused(shop.get("/api/jobs"), "jobs.view_job")


# --- The names before issue 22 ----------------------------------------------------------------


def test_the_old_read_and_write_names_still_work_in_jwts_minted_before_the_upgrade():
    user = _user(*scopes.FAMILIES)
    # a JWT minted before the upgrade (claim scope "write") still writes; "read" still only reads
    now = int(time.time())
    for scope, enqueue in (("write", 201), ("read", 403)):
        old = jwt.encode({"sub": str(user.pk), "iat": now, "exp": now + 60, "scope": scope}, settings.JWT_SECRET, algorithm="HS256")
        assert _bearer(old).get("/api/jobs").status_code == 200
        assert _post(_bearer(old), "/api/jobs", {"type": "examples.echo", "input": {}}).status_code == enqueue


def _migrate(target: list[tuple[str, str]]):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    MigrationExecutor(connection).migrate(target)
    return MigrationExecutor(connection).loader.project_state(target).apps


def test_the_migration_rewrites_stored_scopes_and_keeps_api_only_users_tokens_working():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    latest = [node for node in MigrationExecutor(connection).loader.graph.leaf_nodes() if node[0] == "api"]
    api_only, staff = _user(), _user()
    get_user_model().objects.filter(pk=staff.pk).update(is_staff=True)
    token = "cvy_stored-before-issue-22"
    key_hash = hmac.new(settings.TOKEN_HASH_KEY.encode(), token.encode(), hashlib.sha256).hexdigest()
    # given the schema before issue 22, and tokens stored then: an API-only user's (write), a staff user's (read)
    old = _migrate([("api", "0002_scope_expiry")])
    try:
        OldToken = old.get_model("api", "ApiToken")
        OldToken.objects.create(user_id=api_only.pk, key_hash=key_hash, scope="write")
        OldToken.objects.create(user_id=staff.pk, key_hash="r" * 64, scope="read")
    finally:
        # when the release step migrates
        _migrate(latest)
    # then the scopes are the new names of what they allowed
    rows = dict(ApiToken.objects.values_list("user_id", "scope"))
    assert rows == {api_only.pk: "events:emit jobs:read jobs:write operate", staff.pk: "jobs:read"}
    # and the API-only user was given the permissions behind them: its token still enqueues
    assert scopes.permitted(get_user_model().objects.get(pk=api_only.pk)) == scopes.FAMILIES
    assert _post(_bearer(token), "/api/jobs", {"type": "examples.echo", "input": {}}).status_code == 201
    # and the staff user nothing (permissions would widen what it may do in the admin)
    assert scopes.permitted(get_user_model().objects.get(pk=staff.pk)) == ()
    # and backwards, the old names again
    old = _migrate([("api", "0002_scope_expiry")])
    try:
        assert dict(old.get_model("api", "ApiToken").objects.values_list("user_id", "scope")) == {
            api_only.pk: "write", staff.pk: "read"
        }
    finally:
        _migrate(latest)


# --- The OpenAPI document ---------------------------------------------------------------------


def test_the_openapi_document_states_each_operations_scope():
    document = Client().get("/api/openapi.json").json()
    found = {
        (method, path): op["security"] for path, ops in document["paths"].items() for method, op in ops.items()
    }
    expected = {("post", "/api/events"): "events:emit", ("post", "/api/jobs"): "jobs:write", ("post", "/api/chains"): "jobs:write",
                ("post", "/api/jobs/{job_id}/cancel"): "operate", ("post", "/api/jobs/{job_id}/retry"): "operate",
                **{("post", f"/api/{kind}/{{name}}/{verb}"): "operate" for kind in ("queues", "types") for verb in ("pause", "resume")}}
    assert len(found) == 23  # /api/jobs/{id}/results, /api/queues, /api/queues/scale, /api/pauses, pause, resume, three streams
    for key, security in found.items():
        assert security == [{"TokenAuth": [expected.get(key, "jobs:read")]}], (key, security)
    scheme = document["components"]["securitySchemes"]["TokenAuth"]
    assert all(name in scheme["description"] for name in (*scopes.FAMILIES, "events:emit:<name>", "jobs.add_job"))


# --- Keys: the token hash key, the signing key's rotation -----------------------------------------


def test_api_tokens_survive_a_jwt_secret_change():
    user = _user(scopes.READ)
    with override_settings(JWT_SECRET=OLD_KEY, TOKEN_HASH_KEY=OLD_KEY):
        token = issue_token(user, "jobs:read")
    # when JWT_SECRET is rotated, TOKEN_HASH_KEY keeping the old value
    with override_settings(JWT_SECRET=NEW_KEY, TOKEN_HASH_KEY=OLD_KEY):
        assert _bearer(token).get("/api/jobs").status_code == 200


def test_tokens_hashed_before_the_upgrade_are_found_with_the_default_hash_key():
    # without TOKEN_HASH_KEY (as here), the hash key is JWT_SECRET: a row stored by the code before
    # issue 22 (its HMAC keyed by JWT_SECRET) still authenticates
    assert settings.TOKEN_HASH_KEY == settings.JWT_SECRET
    user = _user(scopes.READ)
    token = "cvy_stored-before-the-upgrade"
    old_hash = hmac.new(settings.JWT_SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()
    ApiToken.objects.create(user=user, key_hash=old_hash, scope="jobs:read")
    assert _bearer(token).get("/api/jobs").status_code == 200


def test_a_jwt_signed_with_the_previous_key_is_accepted_while_it_is_set_and_refused_after():
    user = _user(scopes.READ)
    with override_settings(JWT_SECRET=OLD_KEY):
        before = issue_jwt(user, "jobs:read")
    # during the rotation window: signed with the old key, still accepted
    with override_settings(JWT_SECRET=NEW_KEY, JWT_PREVIOUS_SECRET=OLD_KEY):
        assert _bearer(before).get("/api/jobs").status_code == 200
        after = issue_jwt(user, "jobs:read")
        # and new JWTs are signed with the current key only
        jwt.decode(after, NEW_KEY, algorithms=["HS256"])
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(after, OLD_KEY, algorithms=["HS256"])
    # once the previous key is unset, the old JWT is refused and the new one works
    with override_settings(JWT_SECRET=NEW_KEY, JWT_PREVIOUS_SECRET=""):
        assert _bearer(before).get("/api/jobs").status_code == 401
        assert _bearer(after).get("/api/jobs").status_code == 200
    # and an expired JWT of the previous key is not accepted either
    now = int(time.time())
    expired = jwt.encode({"sub": str(user.pk), "iat": now - 100, "exp": now - 10, "scope": "jobs:read"}, OLD_KEY, algorithm="HS256")
    with override_settings(JWT_SECRET=NEW_KEY, JWT_PREVIOUS_SECRET=OLD_KEY):
        assert _bearer(expired).get("/api/jobs").status_code == 401
