"""kombu's Redis transports with one workaround: a closed connection's channel stays quiet.

kombu#582 (the pinned kombu 5.7.0 still has it): when a worker loses the broker (a Redis Sentinel
failover, a Redis restart), Celery's consumer collects the connection (which detaches the
transport: `transport.client = None`) and then closes it. Closing the channel restores its
unacked messages (`QoS.restore_unacked`), which needs a Redis client; the channel's pools were
just dropped, so kombu builds a new one from `transport.client.hostname`, and raises
`AttributeError: 'NoneType' object has no attribute 'hostname'`. That is no connection error, so
neither `maybe_close_channel` nor Celery's `ignore_errors` catches it: the worker dies
("Unrecoverable error"). A threads-pool worker dies a second time the same way when a job that
ran across the failover ends and its message is acked on the old channel.

`QoS` here does nothing in Redis once its channel's connection is closed (the transport has no
client): restoring is given up with a warning, an ack or reject only forgets the delivery. Nothing
is lost by that. The messages stay in kombu's `unacked` hash, from which a live channel restores
them after the visibility timeout (`restore_visible`); the job rows are the truth, so a restored
duplicate claims nothing (`store.claim`), and a job still running in the worker records its own
outcome. A message whose job never ran is re-sent by the relay (`store.mark_stale`).

`install()` points kombu's `redis`, `rediss` and `sentinel` transport names at these classes, so
every connection of the process uses them, including the ones kombu makes when it switches to
the next sentinel address (`Connection.switch` resolves the URL's scheme again, which a Celery
`broker_transport` setting would not survive). project/celery.py calls it before the app exists.
"""
from __future__ import annotations

import logging
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, redis, virtual

log = logging.getLogger("conveyor.broker")


class QoS(redis.QoS):
    """kombu's Redis QoS, quiet in Redis once its connection is closed (kombu#582)."""

    def _detached(self) -> bool:
        """Whether the channel's connection was closed: no client left to build a pool from."""
        transport = getattr(self.channel, "connection", None)
        return getattr(transport, "client", None) is None

    def restore_unacked(self, client: Any = None) -> None:
        if client is None and self._detached():
            self._flush()
            if self._delivered:
                log.warning(
                    "broker connection closed: %d unacked message(s) not restored now (kombu#582); "
                    "Redis keeps them until the visibility timeout, the job rows keep the work",
                    len(self._delivered),
                )
            self._delivered.clear()
            return
        super().restore_unacked(client)

    def ack(self, delivery_tag: str) -> None:
        if self._detached():
            virtual.QoS.ack(self, delivery_tag)  # forget it here; Redis is not reachable this way
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._detached():
            virtual.QoS.ack(self, delivery_tag)
            return
        super().reject(delivery_tag, requeue=requeue)


class Channel(redis.Channel):
    QoS = QoS


class SentinelChannel(redis.SentinelChannel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel


class SentinelTransport(redis.SentinelTransport):
    Channel = SentinelChannel


#: kombu's transport names (a URL's scheme) -> these classes.
ALIASES = {
    "redis": f"{__name__}:Transport",
    "rediss": f"{__name__}:Transport",
    "sentinel": f"{__name__}:SentinelTransport",
}


def install() -> None:
    """Make kombu resolve the Redis transports' names to the classes above (idempotent)."""
    TRANSPORT_ALIASES.update(ALIASES)
