"""Issue 22: failed logins are counted per (client address, account) by django-axes, for the
admin's login and POST /auth/token alike; behind the TLS proxy the client address comes from
X-Forwarded-For (TRUSTED_PROXY_HOPS); every spelling of an email the lookup takes counts toward
one account. Django's test client over real PostgreSQL (axes' rows) and Redis."""
from __future__ import annotations

import io
import json

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client

from api import scopes
from tests.factories import grant

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-password"
PROXY = "10.0.0.2"  # the TLS proxy: every request reaches gunicorn from it


@pytest.fixture(autouse=True)
def one_proxy(settings):
    settings.TRUSTED_PROXY_HOPS = 1
    settings.LOGIN_FAILURE_LIMIT = settings.AXES_FAILURE_LIMIT = 10
    # Dozens of password checks per test: a fast hasher (the counting is what is under test).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _user(email: str, **flags: bool):
    """A user who may mint a jobs:read JWT (a login that gets past the lockout answers 200)."""
    user = get_user_model().objects.create_user(username=email, email=email, password=PASSWORD, **flags)
    return grant(user, scopes.READ)


def _via_proxy(client_address: str, *, spoofed: str | None = None, proxy: str = PROXY) -> Client:
    """A client behind the proxy: the proxy appends the address it saw to whatever X-Forwarded-For
    the client sent (nginx's $proxy_add_x_forwarded_for)."""
    forwarded = f"{spoofed}, {client_address}" if spoofed else client_address
    return Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=forwarded)


def _token(client: Client, email: str, password: str = PASSWORD):
    body = json.dumps({"email": email, "password": password})
    return client.post("/auth/token", data=body, content_type="application/json")


def test_behind_the_proxy_one_clients_failed_logins_lock_out_that_client_only():
    user = _user("victim@example.com")
    # the attacker sends its own X-Forwarded-For, a new one each time: only the proxy's entry counts
    statuses = [
        _token(_via_proxy("203.0.113.7", spoofed=f"192.0.2.{n}"), user.email, "wrong-password").status_code
        for n in range(10)
    ]
    assert statuses == [401] * 9 + [429]
    locked = _token(_via_proxy("203.0.113.7"), user.email)  # even the right password
    assert locked.status_code == 429
    assert locked["Content-Type"].startswith("application/json")
    assert "too many failed logins" in locked.json()["detail"]
    assert int(locked["Retry-After"]) == settings.LOGIN_COOLOFF_SECONDS
    # the account's owner, another client behind the same proxy, logs in
    owner = _token(_via_proxy("198.51.100.9"), user.email)
    assert owner.status_code == 200, owner.content
    assert owner.json()["token_type"] == "bearer"


def test_a_long_s_spelling_of_the_email_counts_toward_the_same_account():
    with connection.cursor() as cursor:
        cursor.execute("SELECT upper('ſis@example.com')")
        assert cursor.fetchone()[0] == "SIS@EXAMPLE.COM"  # what email__iexact compares
    user = _user("sis@example.com")
    assert _token(_via_proxy("203.0.113.7"), "ſis@example.com").status_code == 200  # the lookup takes it
    # one client, alternating spellings, through different nodes of the proxy (REMOTE_ADDR varies)
    spellings = ["sis@example.com", "ſis@example.com", "SIS@example.com"]
    statuses = [
        _token(_via_proxy("203.0.113.7", proxy=f"10.0.0.{10 + n}"), spellings[n % 3], "wrong").status_code
        for n in range(10)
    ]
    assert statuses == [401] * 9 + [429]
    assert _token(_via_proxy("203.0.113.7"), "ſis@example.com").status_code == 429
    assert _token(_via_proxy("203.0.113.7"), user.email).status_code == 429
    assert _token(_via_proxy("198.51.100.9"), "ſis@example.com").status_code == 200


def test_a_right_password_forgets_the_failures():
    user = _user("forgetful@example.com")
    client = _via_proxy("203.0.113.8")
    assert [_token(client, user.email, "wrong").status_code for _ in range(9)] == [401] * 9
    assert _token(client, user.email).status_code == 200
    assert [_token(client, user.email, "wrong").status_code for _ in range(9)] == [401] * 9


def _admin_login(client: Client, username: str, password: str):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})


def test_admin_login_locks_out_a_client_after_ten_failures():
    admin = _user("root@example.com", is_staff=True, is_superuser=True)
    attacker = _via_proxy("203.0.113.9")
    statuses = [_admin_login(attacker, admin.username, f"guess-{n}").status_code for n in range(10)]
    assert statuses == [200] * 9 + [429]  # 200: the form again, saying the password is wrong
    locked = _admin_login(attacker, admin.username, PASSWORD)
    assert locked.status_code == 429 and "Too many failed logins" in locked.content.decode()
    assert int(locked["Retry-After"]) == settings.LOGIN_COOLOFF_SECONDS
    assert "_auth_user_id" not in attacker.session
    # the same account from another client, and the same client through POST /auth/token, are
    # one count: the API is locked for the attacker too, the admin open for the owner
    assert _token(attacker, admin.email).status_code == 429
    owner = _via_proxy("198.51.100.10")
    response = _admin_login(owner, admin.username, PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/admin/"


def test_without_trusted_proxies_x_forwarded_for_is_ignored(settings):
    settings.TRUSTED_PROXY_HOPS = 0
    user = _user("direct@example.com")
    # a direct client cannot pick its address by writing the header
    statuses = [
        _token(Client(REMOTE_ADDR="203.0.113.20", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}"), user.email, "wrong").status_code
        for n in range(10)
    ]
    assert statuses == [401] * 9 + [429]
    assert _token(Client(REMOTE_ADDR="203.0.113.21"), user.email).status_code == 200


# --- manage.py user: staff and superuser are said, never assumed ----------------------------------


def _user_command(*args: str) -> str:
    out = io.StringIO()
    call_command("user", "--email", "cmd@example.com", "--password", PASSWORD, *args, stdout=out)
    return out.getvalue().strip()


def _flags() -> tuple[bool, bool]:
    user = get_user_model().objects.get(email="cmd@example.com")
    return user.is_staff, user.is_superuser


def test_user_command_makes_a_plain_user_unless_asked():
    assert _user_command() == "created user cmd@example.com: not staff (API only)"
    assert _flags() == (False, False)
    assert _user_command("--staff") == "updated user cmd@example.com: staff (admin, with the permissions granted to it)"
    assert _flags() == (True, False)


def test_user_command_superuser_is_staff_and_keeps_its_flags_on_a_password_change():
    assert _user_command("--superuser") == "created user cmd@example.com: superuser (admin, every permission)"
    assert _flags() == (True, True)
    assert _user_command() == "updated user cmd@example.com: superuser (admin, every permission)"  # a new password only
    assert _flags() == (True, True)
    assert _user_command("--no-superuser").endswith("staff (admin, with the permissions granted to it)")
    assert _flags() == (True, False)
    assert _user_command("--no-staff") == "updated user cmd@example.com: not staff (API only)"
    assert _flags() == (False, False)
    with pytest.raises(CommandError, match="a superuser is staff"):
        _user_command("--superuser", "--no-staff")
    assert _flags() == (False, False)


def test_user_command_help_says_what_each_flag_grants():
    from project.management.commands.user import Command

    text = " ".join(Command().create_parser("manage.py", "user").format_help().split())
    assert "A new user is neither staff nor superuser unless asked" in text
    assert "--superuser, --no-superuser every permission, and staff" in text
    assert "--staff, --no-staff logs in to /admin/, with only the permissions granted" in text


def test_an_unknown_email_that_upper_cases_longer_is_a_401_not_a_500():
    email = "ß" * 240 + "@example.com"  # 252 characters; upper-cased, 492
    response = _token(_via_proxy("203.0.113.30"), email, "wrong")
    assert response.status_code == 401, response.content
