"""What a client may send: JSON that PostgreSQL can store, said in the OpenAPI document too.

PostgreSQL refuses a NUL character in text and in jsonb, Python's JSON reader accepts NaN,
Infinity and 1e400 (which JSON itself cannot carry), and a lone surrogate (`"\\ud800"`) cannot be
encoded to UTF-8. Each would fail deep in the database driver as a 500; here each is a 400 that
names the field. The OpenAPI document says the same (`pattern` on strings, `JsonValue` for free
JSON), so a client, or a fuzzer, that follows the schema never meets the refusal.
"""
from __future__ import annotations

import json
import math
from typing import Annotated, Any

from django.http import HttpRequest
from ninja.errors import ValidationError
from ninja.parser import Parser
from pydantic import AfterValidator, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

#: The tags of the discriminated unions of request schemas (job type names): pydantic puts the tag
#: in an error's path, the error answer leaves it out (api.root).
UNION_TAGS: set[str] = set()

#: The pattern of every string the API accepts: no NUL character.
STORABLE = "^[^\x00]*$"
JSON_VALUE = "#/components/schemas/JsonValue"


class _NotFinite:
    """Stands for NaN, Infinity or an overflowing number in a request body until it is refused."""

    def __repr__(self) -> str:
        return "a number JSON cannot carry"


NOT_FINITE = _NotFinite()


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain the NUL character (\\u0000)"
    if any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        return "must not contain a lone surrogate (\\ud800-\\udfff)"
    return None


def problems(value: Any, path: str) -> dict[str, str]:
    """Every place in a JSON value that PostgreSQL cannot store, by path (`input.items.0.name`)."""
    found: dict[str, str] = {}
    if isinstance(value, str):
        if problem := _text_problem(value):
            found[path] = problem
    elif value is NOT_FINITE or (isinstance(value, float) and not math.isfinite(value)):
        found[path] = "must be a finite number (no NaN, Infinity or overflow)"
    elif isinstance(value, dict):
        for key, item in value.items():
            if problem := _text_problem(str(key)):
                found[f"{path}.{key!r}"] = f"key {problem}"
            else:
                found.update(problems(item, f"{path}.{key}"))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found.update(problems(item, f"{path}.{index}"))
    return found


def _storable_text(text: str) -> str:
    if problem := _text_problem(text):
        raise ValueError(problem)
    return text


def _storable_json(value: Any) -> Any:
    found = problems(value, "")
    if found:
        where, problem = next(iter(found.items()))
        raise ValueError(f"{where.lstrip('.') or 'value'} {problem}")
    return value


#: A string the database can store.
Text = Annotated[str, AfterValidator(_storable_text)]
#: A JSON object the database can store (its strings, keys and numbers checked).
JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_json)]


class JsonParser(Parser):
    """json.loads, with NaN, Infinity and overflowing numbers kept as NOT_FINITE for the schema's
    validation to refuse by field (a parse error could not name one)."""

    def parse_body(self, request: HttpRequest) -> Any:
        return json.loads(request.body, parse_constant=lambda _: NOT_FINITE, parse_float=_finite_or_not)


def _finite_or_not(text: str) -> Any:
    number = float(text)
    if not math.isfinite(number):
        return NOT_FINITE
    # 1.0 is an integer to JSON Schema; to strict validation only 1 is (and 1 is a fine float).
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def strict_body(request: HttpRequest, schema: Any) -> Any:
    """The request body validated again, strictly, as JSON: pydantic's default (lax) mode, which
    ninja uses, takes `false` for a number or `"1"` for an integer, which the schema forbids."""
    adapter = _adapters.get(id(schema))
    if adapter is None:
        adapter = _adapters[id(schema)] = TypeAdapter(schema)
    body = json.dumps(JsonParser().parse_body(request)) if request.body else "{}"
    try:
        return adapter.validate_json(body, strict=True)
    except PydanticValidationError as exc:
        raise ValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from None


_adapters: dict[int, TypeAdapter] = {}


# --- The OpenAPI document says it too --------------------------------------------------------------

_JSON_VALUE_SCHEMA = {
    "title": "JsonValue",
    "description": "Any JSON value PostgreSQL can store: strings without NUL, finite numbers.",
    "anyOf": [
        {"type": "string", "pattern": STORABLE},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": {"$ref": JSON_VALUE}},
        {"type": "object", "additionalProperties": {"$ref": JSON_VALUE}, "propertyNames": {"pattern": STORABLE}},
    ],
}
_FREE_OBJECT = {"type": "object", "additionalProperties": {"$ref": JSON_VALUE}, "propertyNames": {"pattern": STORABLE}}


#: gunicorn answers a request line over this many bytes itself, before the application, with an
#: HTML page (`manage.py start` gives it the largest limit it takes).
REQUEST_LINE_LIMIT = 8190
_TOO_LONG = {
    "description": f"Request line over {REQUEST_LINE_LIMIT} bytes, refused by the HTTP server (gunicorn) with its own page",
    "content": {"text/html": {"schema": {"type": "string"}}},
}


def constrain(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the storable-string pattern to every plain string schema, and make every free-form
    object an object of JsonValue, in a generated OpenAPI document; add the HTTP server's 414."""
    _walk(schema)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).setdefault("414", _TOO_LONG)
    schema.setdefault("components", {}).setdefault("schemas", {})["JsonValue"] = _JSON_VALUE_SCHEMA
    return schema


def _walk(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "string" and not ({"pattern", "format", "enum", "const"} & node.keys()):
        node["pattern"] = STORABLE
    if node.get("type") == "object" and "properties" not in node and node.get("additionalProperties", True) is True:
        node.update(_FREE_OBJECT)
        return
    for value in node.values():
        _walk(value)
