"""gunicorn's worker class for the HTTP servers: uvicorn's (the `uvicorn-worker` package) on
project.asgi, with a drain that answers the open waits and ends the open streams at once.

A draining uvicorn stops accepting, then waits for every in-flight request: a `?wait=` would hold
the drain up to its deadline (CONVEYOR_WAIT_MAX_SECONDS). Here the open waits are answered at the
start of the drain (200, the row as it is then, as at their timeout), so SIGTERM ends a server
in about the time of its ordinary requests. gunicorn's --timeout does not bound a wait: the
worker's heartbeat comes from its event loop, which a wait does not block.
"""
from __future__ import annotations

import socket
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

#: h11 refuses a request head over this (uvicorn's default is 16 KiB); project.asgi answers a
#: request line over api.validation.REQUEST_LINE_LIMIT with the documented 414 below it.
HEAD_LIMIT = 64 * 1024


class DrainingServer(Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        from jobs.interfaces import listener, streams

        listener.close_all()
        streams.close_all()  # (open streams too: each client reconnects, with its Last-Event-ID)
        await super().shutdown(sockets=sockets)


class ConveyorWorker(UvicornWorker):
    # proxy_headers off: uvicorn would otherwise take X-Forwarded-For and -Proto from a loopback
    # peer as the client's address and scheme. The client address is project.logins.client_ip's
    # (TRUSTED_PROXY_HOPS), the scheme Django's SECURE_PROXY_SSL_HEADER (FORWARDED_PROTO_HEADER),
    # as under gunicorn's sync workers before.
    CONFIG_KWARGS: dict[str, Any] = {
        "loop": "asyncio", "http": "h11", "h11_max_incomplete_event_size": HEAD_LIMIT, "proxy_headers": False,
    }

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
