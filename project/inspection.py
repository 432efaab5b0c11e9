"""`celery inspect conf` and `inspect report` answered without the credentials in URLs.

A worker answers `inspect conf` with its app's whole configuration, which under the CELERY
namespace is every Django setting; Flower asks it for each worker it shows (its worker page's
"Config" tab and `GET /api/workers`), so whoever may open Flower reads it. Celery masks a setting
whose name says KEY, SECRET, PASS, TOKEN or DATABASE, and the URL of `broker_url` by that exact
name, but not `CELERY_BROKER_URL`, `REDIS_URL` or the cache's `LOCATION`: a Redis password
(`redis://:password@host`, `rediss://user:password@host`, `sentinel://...?password=`) went out in
clear. `install` replaces the two commands by the same ones with every password in a URL (its
userinfo's, and a `password=` parameter's) written as Celery writes a masked value.
"""
from __future__ import annotations

import re
from typing import Any

from celery.worker import control

MASK = "********"
#: scheme://user:password@ -> scheme://user:********@ (the user is not a secret; the password is)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/@\s:'\"]*):([^/@\s'\"]*)@")
#: ?password=...&sentinel_password=... -> ********
_PARAMETER = re.compile(r"(?i)([?&;](?:[a-z_]*_)?password=)[^&;\s'\"]*")

_conf = control.conf
_report = control.report


def without_credentials(value: Any) -> Any:
    """`value` (a setting: text, or mappings and sequences of them) with each URL's password masked."""
    if isinstance(value, str):
        # str(): a lazy object posing as a str (a JSONSerializableLazyObject among the settings)
        # passes isinstance but not re.sub
        return _PARAMETER.sub(rf"\g<1>{MASK}", _USERINFO.sub(rf"\g<1>:{MASK}@", str(value)))
    if isinstance(value, dict):
        return {key: without_credentials(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(without_credentials(item) for item in value)
    return value


def conf(state: Any, with_defaults: bool = False, **kwargs: Any) -> Any:
    """List configuration (passwords in URLs masked)."""
    return without_credentials(_conf(state, with_defaults=with_defaults, **kwargs))


def report(state: Any) -> Any:
    """Information about Celery installation for bug reports (passwords in URLs masked)."""
    return without_credentials(_report(state))


def install() -> None:
    """Register `conf` and `report` in place of Celery's (same names, alias, arguments)."""
    control.inspect_command(alias="dump_conf", signature="[include_defaults=False]",
                            args=[("with_defaults", control.strtobool)])(conf)
    control.inspect_command()(report)
