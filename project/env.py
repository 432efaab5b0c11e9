"""Reading the environment: one place that knows every variable, its default and its checks.

A wrong or missing setting stops the process at start-up with a one-line message naming the
variable (`ConfigError`), never a silent fallback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}
MODES = ("shared", "server", "worker")
MIN_SECRET_LENGTH = 50  # Django's own deploy check (security.W009) wants 50+ characters
MIN_SECRET_DISTINCT = 5  # ... and 5+ different ones
DEV_SECRET = "conveyor-development-secret-not-for-production-use"
# Values copied from examples and templates: refused in production whatever their length.
KNOWN_DEFAULTS = (DEV_SECRET, "changeme", "change-me", "change_me", "secret", "password")
INSECURE_PREFIX = "django-insecure"  # what `django-admin startproject` generates


class ConfigError(SystemExit):
    """A configuration problem: printed as one line, exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(message: str) -> None:
    """Stop the process now with a one-line message on stderr."""
    print(f"conveyor: configuration error: {message}", file=sys.stderr, flush=True)
    raise ConfigError(message)


def get(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def get_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    fail(f"{name}={raw!r} is not a boolean (use true or false)")
    return default  # unreachable


def get_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        fail(f"{name}={raw!r} is not an integer")
    if value < minimum:
        fail(f"{name}={raw!r} must be at least {minimum}")
    return value


def get_float(name: str, default: float, minimum: float, maximum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        fail(f"{name}={raw!r} is not a number")
    if not minimum <= value <= maximum:  # NaN included
        fail(f"{name}={raw!r} must be between {minimum:g} and {maximum:g}")
    return value


def get_list(name: str) -> list[str]:
    return [item.strip() for item in get(name).split(",") if item.strip()]


def is_production() -> bool:
    env = get("CONVEYOR_ENV", "development").lower()
    if env not in ("development", "production", "test"):
        fail(f"CONVEYOR_ENV={env!r} must be development, production or test")
    return env == "production"


def worker_mode() -> str:
    mode = get("WORKER_MODE", "shared").lower() or "shared"
    if mode not in MODES:
        fail(f"WORKER_MODE={mode!r} must be one of {', '.join(MODES)}")
    return mode


CPU_POLICIES = ("normal", "idle")


def worker_cpu_policy() -> str:
    """WORKER_CPU_POLICY: the CPU policy of the threads that run jobs (jobs.engine.cpu_policy)."""
    raw = os.environ.get("WORKER_CPU_POLICY")
    policy = (raw or "").strip().lower() or "normal"
    if policy not in CPU_POLICIES:
        fail(f"WORKER_CPU_POLICY={raw!r} must be one of {', '.join(CPU_POLICIES)}")
    if policy == "idle" and not hasattr(os, "SCHED_IDLE"):
        fail("WORKER_CPU_POLICY=idle needs Linux's SCHED_IDLE, which this system lacks")
    return policy


def data_dir() -> Path:
    return Path(get("CONVEYOR_DATA", "var")).resolve()


def secret(name: str, production: bool) -> str:
    """A secret from the environment; in production it must be set, long, and not a known default."""
    value = get(name)
    if production:
        if not value:
            fail(f"{name} is not set (production needs a random value of {MIN_SECRET_LENGTH}+ characters)")
        if len(value) < MIN_SECRET_LENGTH:
            fail(f"{name} is too short ({len(value)} characters; production needs {MIN_SECRET_LENGTH}+)")
        lowered = value.lower()
        if lowered.startswith(INSECURE_PREFIX) or any(known in lowered for known in KNOWN_DEFAULTS):
            fail(f"{name} is a known default or placeholder; production needs a random value")
        if len(set(value)) < MIN_SECRET_DISTINCT:
            fail(f"{name} has fewer than {MIN_SECRET_DISTINCT} different characters; production needs a random value")
    return value or DEV_SECRET
