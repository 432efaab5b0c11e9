"""Errors in plain words: what a wrong request is told, as pure functions over plain values.

pydantic says `Input tag 'nope.nothing' found using 'type' does not match any of the expected
tags: ...` for a job type nobody declared and `Unable to extract tag using discriminator 'type'`
for a missing one; Django says `No Job matches the given query.` These turn them into sentences a
person acts on: what is wrong, the close matches, where the list is. No Django, no database: the
HTTP layer (api.root, api.token_http, api.middleware) calls them.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Iterable

#: Where a client finds the job types it may name (jobs.interfaces.http's catalog).
CATALOG = "GET /api/types"

_TAGS = re.compile(r"'((?:[^'\\]|\\.)*)'")
_DJANGO_404 = re.compile(r"^No (\w+) matches the given query\.?$")


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates nearest to `word` (difflib's ratio, best first), at most `n`."""
    return difflib.get_close_matches(word, sorted(set(candidates)), n=n, cutoff=0.6)


def field_message(error: dict[str, Any], known_tags: Iterable[str] = ()) -> str:
    """One validation error of pydantic (as ninja reports it) in plain words.

    `known_tags`: every job type name the API knows (a known one refused where it stands is not
    "unknown": a group's member may not be a type that continues or fans out)."""
    kind, ctx = error.get("type"), error.get("ctx") or {}
    discriminator = str(ctx.get("discriminator", "")).strip("'")
    if kind == "union_tag_invalid" and discriminator == "type":
        tag = str(ctx.get("tag", ""))
        if tag in set(known_tags):
            return f"job type {tag!r} cannot be used here (a group's member must not continue or fan out)"
        matches = close_matches(tag, _TAGS.findall(str(ctx.get("expected_tags", ""))))
        hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
        return f"unknown job type {tag!r}{hint} (the job types: {CATALOG})"
    if kind == "union_tag_not_found" and discriminator == "type":
        return f"the field `type` is required: the name of a job type ({CATALOG})"
    return str(error.get("msg", "invalid"))


def without_nul(text: str) -> str:
    """`text` with each NUL written as JSON writes it (`\\u0000`): an answer echoes the field
    names a client sent, and the OpenAPI document promises no NUL in any string of it (the
    pattern `^[^\\x00]*$`, api.validation); schemathesis found `{"k\\u0000": 1}` echoed raw."""
    return text.replace("\x00", "\\u0000")


def invalid_detail(fields: dict[str, str]) -> str:
    """The `detail` of a 400 for these wrong fields: the one message when one field is wrong."""
    if len(fields) == 1:
        [(field, message)] = fields.items()
        return message if field == "type" else f"{field}: {message}"
    return f"invalid request: {len(fields)} fields are wrong ({', '.join(list(fields)[:5])})"


def not_found_detail(message: str, ids: Iterable[object] = ()) -> str:
    """The `detail` of every 404: what was not found, in the same lower-case words everywhere.

    `message` is the Http404's (Django's get_object_or_404 says `No Job matches the given
    query.`), `ids` the request's path ids (the job's id in /api/jobs/12)."""
    found = _DJANGO_404.match(message or "")
    if found:
        ids = list(ids)
        what = found[1].lower()
        return f"no {what} {ids[0]}" if len(ids) == 1 else f"no such {what}"
    if message and not message.lower().startswith("not found"):
        return message
    return "not found"


def no_route_detail(path: str, docs: str) -> str:
    """The `detail` of a 404 for a path no route answers."""
    return f"not found: no route {path} (the routes: {docs})"


#: Seconds a client waits before trying again after a 503 (its `Retry-After`).
RETRY_AFTER_SECONDS = 1


def unavailable_detail(what: str = "the database") -> str:
    """The `detail` of a 503: the store could not be reached or had no free connection in time
    (the server's pool of CONVEYOR_WEB_DB_POOL connections all busy): nothing was done, try again."""
    return f"{what} is unavailable or busy right now: nothing was done, try again in a moment"
