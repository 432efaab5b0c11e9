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
MIN_SECRET_LENGTH = 32
DEV_SECRET = "conveyor-development-secret-not-for-production-use"


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


def data_dir() -> Path:
    return Path(get("CONVEYOR_DATA", "var")).resolve()


def secret(name: str, production: bool) -> str:
    """A secret from the environment; in production it must be set and long enough."""
    value = get(name)
    if production:
        if not value:
            fail(f"{name} is not set (production needs a random value of {MIN_SECRET_LENGTH}+ characters)")
        if len(value) < MIN_SECRET_LENGTH:
            fail(f"{name} is too short ({len(value)} characters; production needs {MIN_SECRET_LENGTH}+)")
    return value or DEV_SECRET
