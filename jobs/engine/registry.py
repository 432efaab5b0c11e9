"""Job types: declared in code per feature slice with @job_type, merged into one registry."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

from django.conf import settings
from pydantic import BaseModel, ValidationError

from api.errors import BadInput, TooLarge
from jobs.engine import decisions
from api.validation import problems

PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 9, 5  # 0 runs first, as in kombu's Redis transport


class InvalidJob(BadInput):
    """A job that cannot be enqueued: unknown type or input that fails its schema.

    `errors` maps a field path (`input.width`) to its message, for 400 responses.
    """


class InputTooLarge(InvalidJob, TooLarge):
    """An input whose JSON is over CONVEYOR_MAX_INPUT_BYTES (HTTP: 413 naming the field)."""


def json_size(value: Any) -> int:
    """The size a value is measured by against the limits: its JSON text as Conveyor sends it to
    PostgreSQL (json.dumps: ASCII, so one character is one byte)."""
    return len(json.dumps(value))


def max_input_bytes() -> int:
    return int(settings.CONVEYOR["MAX_INPUT_BYTES"])


def max_output_bytes() -> int:
    return int(settings.CONVEYOR["MAX_OUTPUT_BYTES"])


class Permanent(Exception):
    """A failure that no retry can change: the job is dead after this attempt, whatever attempts
    it has left (the runner records it as its last: store.fail(permanent=True)).

    A handler raises it for what it knows will fail again (`raise jobs.Permanent("customer 7 was
    deleted")`); the platform raises it for a group's member that calls continue_with or fan_out.
    """


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: base * 2**(attempt-1), capped, times 0.5..1.0."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, attempt: int) -> float:
        return decisions.backoff(attempt, self.base, self.cap)


class Rate(NamedTuple):
    """A rate limit: at most `count` starts per `seconds`, spaced evenly (one every `interval`)."""

    count: int
    seconds: int
    #: As declared (`"20/s"`), for listings.
    text: str

    @property
    def interval(self) -> float:
        """Seconds between two starts (GCRA's emission interval)."""
        return self.seconds / self.count


_PERIODS = {"s": 1, "m": 60, "h": 3600}
_RATE = re.compile(r"([1-9][0-9]{0,8})/([smh])")


def parse_rate(text: object) -> Rate:
    """`"20/s"`, `"100/m"`, `"5/h"`: a whole number of starts per second, minute or hour.

    Raises ValueError naming what is wrong (the declaration turns it into ImproperlyDeclared)."""
    match = _RATE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"rate_limit {text!r} is not '<count>/s', '<count>/m' or '<count>/h' "
            "(a whole number of starts, at least 1, per second, minute or hour: e.g. '20/s')"
        )
    return Rate(int(match[1]), _PERIODS[match[2]], text)


@dataclass(frozen=True)
class JobType:
    #: Stable public name (`images.resize`), never a module path.
    name: str
    handler: Callable[..., Any]
    #: The Celery queue its messages go to; workers choose queues with --queues.
    queue: str = "default"
    #: Pydantic model the input is validated against at enqueue; None accepts any JSON object.
    input: type[BaseModel] | None = None
    #: Attempts after the first before the job is dead.
    retries: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    #: Seconds a run may take (Celery soft limit; hard limit a few seconds later).
    timeout: int = 300
    priority: int = PRIORITY_DEFAULT
    aliases: tuple[str, ...] = ()
    #: A jobs.engine.schedules.Schedule: synced into django-celery-beat by `manage.py sync_schedules`.
    schedule: Any = None
    #: Called as on_finish(job_id, status) inside the transaction that records a final outcome
    #: (succeeded, dead or cancelled): the event bus uses it to release a key's next delivery.
    on_finish: Callable[[int, str], None] | None = None
    #: Enqueueable over HTTP (`POST /api/jobs`, a chain's steps). Platform and delivery types
    #: are not: only code enqueues them.
    public: bool = False
    #: Global limits, over every worker of every host (jobs.engine.limits): at most `rate_limit` starts
    #: (`"20/s"`, parsed into a Rate), `concurrency` running jobs of the type, and
    #: `concurrency_per_key` running jobs of one `limit_key` (given at enqueue). None: no limit.
    rate_limit: Rate | None = None
    concurrency: int | None = None
    concurrency_per_key: int | None = None
    #: Its handler may call ctx.continue_with or ctx.fan_out. Such a type cannot be a group's
    #: member (a member's chain goes on only when every member has ended): refused when a chain is
    #: planned or a group fanned out (400 naming the member), rather than dead after its run.
    continues: bool = False
    #: The handler's database writes (Django's `default` connection) and its outcome commit in one
    #: transaction, fenced by the attempt: a run that raised, lost its lease, was reaped, handed
    #: back or killed leaves no write behind (jobs.engine.runner._atomic). Keep such handlers short:
    #: the transaction stays open for the whole run (bounded by `timeout` in PostgreSQL too).
    atomic: bool = False

    @property
    def limited(self) -> bool:
        """Does a claim of this type go through jobs.engine.limits?"""
        return self.rate_limit is not None or self.holds_slots

    @property
    def holds_slots(self) -> bool:
        """Does a running job of this type hold a concurrency slot (released at its end)?"""
        return self.concurrency is not None or self.concurrency_per_key is not None

    def describe_limits(self) -> str:
        """The limits in a few words, for listings (`"10/s, 3 at once, 1 per key"`)."""
        parts = [self.rate_limit.text] if self.rate_limit else []
        if self.concurrency is not None:
            parts.append(f"{self.concurrency} at once")
        if self.concurrency_per_key is not None:
            parts.append(f"{self.concurrency_per_key} per key")
        return ", ".join(parts)

    def validate(self, data: Any) -> dict[str, Any]:
        """Validate `data` against the input schema; return the JSON form stored in the row."""
        if self.input is None:
            if data is None:
                return {}
            if not isinstance(data, dict):
                raise InvalidJob("input must be a JSON object", {"input": "must be a JSON object"})
            stored = data
        else:
            try:
                model = self.input.model_validate(data if data is not None else {})
            except ValidationError as exc:
                errors = {
                    ".".join(["input", *map(str, err["loc"])]): err["msg"] for err in exc.errors()
                }
                raise InvalidJob(f"input does not match {self.name}'s schema", errors) from None
            stored = model.model_dump(mode="json")
        if found := problems(stored, "input"):
            raise InvalidJob("input holds what PostgreSQL cannot store", found)
        size, limit = json_size(stored), max_input_bytes()
        if size > limit:
            message = f"{size} bytes of JSON, over the limit of {limit} (CONVEYOR_MAX_INPUT_BYTES)"
            raise InputTooLarge(f"input is {message}", {"input": f"is {message}"})
        return stored

    def input_schema(self) -> dict[str, Any]:
        """The JSON schema of the input (any JSON object when the type declares none)."""
        return self.input.model_json_schema() if self.input is not None else {"type": "object"}

    def parse(self, stored: dict[str, Any]) -> Any:
        """The handler's argument: the schema's model, or the dict itself."""
        return self.input.model_validate(stored) if self.input is not None else stored


_types: dict[str, JobType] = {}
_aliases: dict[str, str] = {}
_limited: list[str] | None = None
#: Bumped by every add and remove: a cache of something derived from the types keys on it.
_version = 0


def version() -> int:
    """A number that changes whenever a type is added or removed (jobs.engine.continuing caches the
    types' table of its statement on it)."""
    return _version


def job_type(
    name: str,
    *,
    queue: str = "default",
    input: type[BaseModel] | None = None,  # noqa: A002 - the declaration's name for the input schema
    retries: int = 3,
    backoff: Backoff | None = None,
    timeout: int = 300,
    priority: int = PRIORITY_DEFAULT,
    aliases: tuple[str, ...] = (),
    schedule: Any = None,
    public: bool = False,
    rate_limit: str | None = None,
    concurrency: int | None = None,
    concurrency_per_key: int | None = None,
    continues: bool = False,
    atomic: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a job type: `@job_type("images.resize", queue="images", input=Resize)`.

    The handler is called as `handler(ctx, data)` and returns a JSON-serializable output (or None).
    `public=True` lets HTTP clients enqueue it (`POST /api/jobs`); code can enqueue any type.
    Limits hold across every worker and host: `rate_limit="20/s"` (or `"100/m"`, `"5/h"`),
    `concurrency=3` (running at once), `concurrency_per_key=1` (running at once per `limit_key`,
    given at enqueue); a job held back by one waits in the database (docs/architecture.md, "Limits").
    `continues=True`: the handler may call ctx.continue_with or ctx.fan_out, so the type is refused
    as a group's member when the chain is planned (a member that continues anyway is dead after
    its first attempt: jobs.Permanent).
    `atomic=True`: the handler's writes through Django's default connection commit with its
    outcome, in one transaction fenced by the attempt, or not at all (a failed, lost or killed
    run leaves none behind; the retry starts from a clean slate): exactly-once effects in the
    database. Effects outside it still need `ctx.idempotency_key` (docs/atomic.md).
    """

    def register(handler: Callable[..., Any]) -> Callable[..., Any]:
        add(
            JobType(
                name=name,
                handler=handler,
                queue=queue,
                input=input,
                retries=retries,
                backoff=backoff or Backoff(),
                timeout=timeout,
                priority=priority,
                aliases=tuple(aliases),
                schedule=schedule,
                public=public,
                rate_limit=rate_limit,  # type: ignore[arg-type] - parsed by add()
                concurrency=concurrency,
                concurrency_per_key=concurrency_per_key,
                continues=continues,
                atomic=atomic,
            )
        )
        return handler

    return register


def add(jt: JobType) -> None:
    """Register a job type; refuse a duplicate name or alias and impossible settings."""
    jt = _checked_limits(jt)
    for taken in (jt.name, *jt.aliases):
        if taken in _types or taken in _aliases:
            owner = _types.get(taken) or _types[_aliases[taken]]
            raise ImproperlyDeclared(
                f"job type {taken!r} is declared twice "
                f"({owner.handler.__module__}.{owner.handler.__qualname__} and "
                f"{jt.handler.__module__}.{jt.handler.__qualname__})"
            )
    if not PRIORITY_MIN <= jt.priority <= PRIORITY_MAX:
        raise ImproperlyDeclared(f"job type {jt.name!r}: priority must be 0..9, got {jt.priority}")
    if not isinstance(jt.atomic, bool):
        raise ImproperlyDeclared(f"job type {jt.name!r}: atomic must be True or False, got {jt.atomic!r}")
    if jt.retries < 0 or jt.timeout < 1:
        raise ImproperlyDeclared(f"job type {jt.name!r}: retries >= 0 and timeout >= 1 required")
    # Redis redelivers a message unacked for longer than the visibility timeout (kombu#337).
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    if jt.timeout + 60 > visibility:
        raise ImproperlyDeclared(
            f"job type {jt.name!r}: timeout {jt.timeout}s must stay 60s under "
            f"CONVEYOR_VISIBILITY_TIMEOUT ({visibility}s)"
        )
    global _limited, _version
    _types[jt.name] = jt
    for alias in jt.aliases:
        _aliases[alias] = jt.name
    _limited = None
    _version += 1


def _checked_limits(jt: JobType) -> JobType:
    """The type with its rate limit parsed; a bad rate or concurrency refused with its name."""
    if isinstance(jt.rate_limit, str) or (jt.rate_limit is not None and not isinstance(jt.rate_limit, Rate)):
        try:
            jt = dataclasses.replace(jt, rate_limit=parse_rate(jt.rate_limit))
        except ValueError as exc:
            raise ImproperlyDeclared(f"job type {jt.name!r}: {exc}") from None
    for name in ("concurrency", "concurrency_per_key"):
        value = getattr(jt, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ImproperlyDeclared(f"job type {jt.name!r}: {name} must be a whole number of at least 1 (or None), got {value!r}")
    return jt


def remove(name: str) -> None:
    """Forget a job type and its aliases (tests that declare a type of their own clean up)."""
    global _limited, _version
    jt = _types.pop(name, None)
    for alias in jt.aliases if jt else ():
        _aliases.pop(alias, None)
    _limited = None
    _version += 1


class ImproperlyDeclared(Exception):
    """A job type declaration that cannot work (duplicate name, bad priority...)."""


#: Called with a type name the registry does not know, in order, until one declares it: how an
#: adapter declares types lazily (conveyor_tasks: a django.tasks task's module path, in the worker).
_resolvers: list[Callable[[str], None]] = []


def add_resolver(resolver: Callable[[str], None]) -> None:
    """Register `resolver(name)`, asked to declare a type `get` does not know (once per process)."""
    if resolver not in _resolvers:
        _resolvers.append(resolver)


def find(name: str) -> JobType | None:
    """The type declared under `name` (or an alias), or None; asks no resolver."""
    return _types.get(name) or _types.get(_aliases.get(name, ""))


def get(name: str) -> JobType:
    jt = find(name)
    if jt is None and _resolvers and isinstance(name, str):
        for resolver in _resolvers:
            resolver(name)
        jt = _types.get(name) or _types.get(_aliases.get(name, ""))
    if jt is None:
        raise InvalidJob(f"unknown job type {name!r}", {"type": f"unknown job type {name!r}"})
    return jt


def all_types() -> list[JobType]:
    return sorted(_types.values(), key=lambda jt: jt.name)


def limited() -> list[str]:
    """Names (and aliases) of the types whose claims go through jobs.engine.limits (asked by every
    claim: computed once per change of the registry)."""
    global _limited
    if _limited is None:
        names = [jt.name for jt in _types.values() if jt.limited]
        _limited = sorted(names + [alias for alias, name in _aliases.items() if _types[name].limited])
    return _limited


#: Queues an adapter's jobs use beside its declared types' (conveyor_tasks: a tasks backend's
#: QUEUES, whose job types are declared only when first met).
_extra_queues: set[str] = set()


def add_queues(names: Iterable[str]) -> None:
    """Make `names` part of `queues()`: consumed by a default worker, accepted by --queues."""
    _extra_queues.update(names)


def queues() -> list[str]:
    """Every queue some job type (or an adapter, add_queues) uses: the default list a worker consumes."""
    return sorted({jt.queue for jt in _types.values()} | {"default"} | _extra_queues)


def autodiscover() -> None:
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("jobs")
