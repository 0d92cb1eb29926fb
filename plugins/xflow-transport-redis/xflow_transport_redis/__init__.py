"""xflow-transport-redis: registers the ``redis`` transport (Redis Streams) with xflow.

Declared in this distribution's ``setup.cfg`` under the ``xflow`` entry-point group; the
transport module (and the ``redis`` client) is imported only when xflow asks for transports.
"""

from __future__ import annotations

from xflow.core.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def xflow_transports() -> list[type]:
    from xflow_transport_redis.transport import RedisTransport

    return [RedisTransport]
