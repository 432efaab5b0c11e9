"""Schemas every router shares: strict input (unknown fields refused) and the error answer."""
from __future__ import annotations

from ninja import Schema
from pydantic import ConfigDict


class Strict(Schema):
    model_config = ConfigDict(extra="forbid")


class Error(Schema):
    detail: str
    fields: dict[str, str] | None = None


ERRORS = {400: Error, 401: Error, 404: Error, 409: Error, 413: Error}
