"""What a bearer may do on /api/: scopes per family, each bounded by a Django permission.

| scope | routes | the user's permission |
|---|---|---|
| `events:emit` | `POST /api/events` (any event) | `subscribers.add_event` |
| `events:emit:<name>` | `POST /api/events` for the event `<name>` only (a storefront page's token) | `subscribers.add_event` |
| `jobs:read` | every `GET` under /api/: jobs, chains, events, the catalog | `jobs.view_job` |
| `jobs:write` | `POST /api/jobs`, `POST /api/chains` | `jobs.add_job` |
| `operate` | `POST /api/jobs/{id}/cancel`, `POST /api/jobs/{id}/retry` | `jobs.operate` |

A token (an `ApiToken` row, a JWT's `scope` claim) holds one or more scopes, written as one
space-separated string (OAuth 2's form). No scope includes another. A user can mint a token only
with scopes whose permission they have (a superuser has every one), and a request is checked
against the user's permission again, so taking a permission away takes it from their tokens too.

The scopes before issue 22 are still understood wherever a scope is read (the token command,
`POST /auth/token`, a JWT issued before the upgrade): `read` is `jobs:read`, `write` is every
family (what it allowed then). Stored tokens were rewritten by migration api 0003.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

EMIT, READ, WRITE, OPERATE = "events:emit", "jobs:read", "jobs:write", "operate"
FAMILIES = (EMIT, READ, WRITE, OPERATE)
#: The Django permission each family needs: the same rights the admin gives.
PERMISSIONS = {
    EMIT: "subscribers.add_event",
    READ: "jobs.view_job",
    WRITE: "jobs.add_job",
    OPERATE: "jobs.operate",
}
#: The names before issue 22 and what they mean now.
LEGACY = {"read": (READ,), "write": FAMILIES}
# An event name as subscribers.bus.EVENT_NAME has it (api imports nothing of subscribers).
_EMIT_ONE = re.compile(r"^events:emit:([a-z0-9][a-z0-9_.\-]{0,199})$")
HELP = (
    "space-separated scopes: events:emit, events:emit:<event name>, jobs:read, jobs:write, operate "
    "(read = jobs:read, write = all four)"
)


class ScopeError(ValueError):
    """A scope that does not exist (a 400 naming the field `scope`)."""


class ScopeRefused(PermissionError):
    """A scope the user's permissions do not allow (a 403 naming the scope); None: the user has
    none of the permissions behind any scope."""

    def __init__(self, scope: str | None) -> None:
        self.scope = scope
        if scope is None:
            self.permission = ", ".join(PERMISSIONS.values())
            message = f"this user has none of the permissions behind the scopes ({self.permission})"
        else:
            self.permission = PERMISSIONS[family(scope)]
            message = f"the scope {scope} needs the permission {self.permission}, which this user does not have"
        super().__init__(message)


def family(scope: str) -> str:
    """`events:emit:order.placed` -> `events:emit`; a family is its own."""
    return EMIT if _EMIT_ONE.match(scope) else scope


def parse(value: str | Iterable[str]) -> tuple[str, ...]:
    """Scopes from a space-separated string or a list: legacy names expanded, duplicates and
    names covered by `events:emit` dropped, in a stable order. ScopeError on an unknown one."""
    words = value.split() if isinstance(value, str) else [word for item in value for word in str(item).split()]
    found: set[str] = set()
    for word in words:
        if word in LEGACY:
            found.update(LEGACY[word])
        elif word in FAMILIES or _EMIT_ONE.match(word):
            found.add(word)
        else:
            raise ScopeError(f"unknown scope {word!r}: {HELP}")
    if EMIT in found:
        found = {scope for scope in found if family(scope) != EMIT} | {EMIT}
    return tuple(sorted(found, key=lambda scope: (FAMILIES.index(family(scope)), scope)))


def render(scopes: Iterable[str]) -> str:
    return " ".join(scopes)


def permitted(user: Any) -> tuple[str, ...]:
    """Every family the user's permissions allow (a superuser: all of them)."""
    return tuple(name for name in FAMILIES if user.has_perm(PERMISSIONS[name]))


def bound(user: Any, scopes: Iterable[str]) -> None:
    """Refuse (ScopeRefused, naming it) the first scope the user may not hold."""
    for scope in scopes:
        if not user.has_perm(PERMISSIONS[family(scope)]):
            raise ScopeRefused(scope)


def holding(permission: str, user: str) -> Any:
    """An EXISTS that says whether the user (the outer query's field `user`) holds `permission`
    itself or through a group: ModelBackend's rule (a superuser holds everything: checked apart),
    in the request's one lookup query instead of `has_perm`'s two more queries."""
    from django.contrib.auth.models import Permission
    from django.db.models import Exists, OuterRef, Q

    app_label, codename = permission.split(".")
    found = Permission.objects.filter(content_type__app_label=app_label, codename=codename)
    return Exists(found.filter(Q(user=OuterRef(user)) | Q(group__user=OuterRef(user))))


def allows(scopes: Iterable[str], wanted: str) -> bool:
    """Whether the scopes open a route of family `wanted`."""
    return any(family(scope) == wanted for scope in scopes)


def may_emit(scopes: Iterable[str], name: str) -> bool:
    """Whether the scopes let the bearer emit the event `name`."""
    return any(scope == EMIT or scope == f"{EMIT}:{name}" for scope in scopes)
