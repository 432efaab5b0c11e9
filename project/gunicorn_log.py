"""gunicorn's logger for the HTTP servers, with the address it listens at.

With `--reuse-port` (every server of a cluster shares the port) gunicorn's master opens no socket:
each worker binds its own. The master then logs `Listening at:  (pid)`, the address empty. This
logger names the configured address instead (`Listening at: http://127.0.0.1:8000 (pid; each worker
binds it, SO_REUSEPORT)`); every other line is gunicorn's own.
"""
from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

LISTENING = "Listening at: %s (%s)"


def listening_line(args: tuple[Any, ...], binds: list[str], reuse_port: bool) -> tuple[Any, ...]:
    """gunicorn's arguments of the `Listening at` line, the address filled in when it is empty."""
    if len(args) != 2 or args[0]:
        return args
    addresses = ",".join(b if "://" in b else f"http://{b}" for b in binds) or "?"
    return (addresses, f"{args[1]}; each worker binds it, SO_REUSEPORT" if reuse_port else args[1])


class ConveyorLogger(Logger):
    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if msg == LISTENING:
            args = listening_line(args, list(self.cfg.bind or ()), bool(self.cfg.reuse_port))
        super().info(msg, *args, **kwargs)
