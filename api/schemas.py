"""Schemas every router shares: strict input, the error answer, ids, and keyset pages."""
from __future__ import annotations

from typing import Annotated, Any

from django.db.models import QuerySet
from ninja import Schema
from pydantic import BaseModel, ConfigDict, Field

#: The largest id a client may send (PostgreSQL's bigint): past it, a 400 and not a 500.
MAX_ID = 2**63 - 1
PAGE_DEFAULT, PAGE_MAX = 50, 200

Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class Strict(BaseModel):
    """Request schemas: unknown fields refused. A plain pydantic model, not a ninja Schema (whose
    validator reads attributes off objects): a body is validated strictly as JSON, where an
    RFC 3339 string is a datetime (api.validation.strict_body)."""

    model_config = ConfigDict(extra="forbid")


class Error(Schema):
    """Every error answer (docs/errors.md): `detail`, a sentence; `fields`, only when fields are
    at fault, each as the client named it with what is wrong (never `null`)."""

    detail: str
    fields: dict[str, str] | None = Field(None, exclude_if=lambda value: value is None)


def errors(*codes: int) -> dict[int, type[Error]]:
    """The error answers a route can give, each with the JSON error schema."""
    return {code: Error for code in codes}


class PageQuery(Strict):
    limit: int = Field(PAGE_DEFAULT, ge=1, le=PAGE_MAX, description=f"items per page (at most {PAGE_MAX})")
    before: int | None = Field(
        None, ge=1, le=MAX_ID, description="the previous page's `next`: the page continues with smaller ids"
    )


def page(rows: QuerySet, query: PageQuery) -> dict[str, Any]:
    """One page, newest first, by id (keyset: no OFFSET scan, no count of the whole table)."""
    if query.before is not None:
        rows = rows.filter(id__lt=query.before)
    items = list(rows.order_by("-id")[: query.limit + 1])
    more = len(items) > query.limit
    items = items[: query.limit]
    return {"items": items, "next": items[-1].pk if more else None}
