"""Transport ``kinesis``: one Amazon Kinesis data stream per workflow event, consumer leases in DynamoDB.

- :mod:`.transport`: the plugin (streams, setup and teardown, publish with ordered PutRecords, subscribe);
- :mod:`.consumer`: a group member's consumer (shard reading, poll and commit; its fair share of the shards comes
  from the core's lease coordinator);
- :mod:`.leases`: the DynamoDB lease table (the lease store: leases, group members; and the checkpoints);
- :mod:`.lag`: how far a consumer group is behind, per shard (``KinesisTransport.lag``).

Registered through the entry point ``kinesis = xflow.transports.kinesis`` (group ``xflow``).
"""

from __future__ import annotations

from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import Transport
from xflow.transports.kinesis.consumer import KinesisConsumer
from xflow.transports.kinesis.leases import SHARD_END
from xflow.transports.kinesis.transport import (
    MAX_BYTES_PER_CALL,
    MAX_KEY_CHARS,
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_CALL,
    PUT_ATTEMPTS,
    PUT_FIRST_WAIT,
    PUT_MAX_WAIT,
    PUT_SECONDS,
    KinesisTransport,
)

__all__ = [
    "MAX_BYTES_PER_CALL", "MAX_KEY_CHARS", "MAX_RECORDS_PER_CALL", "MAX_RECORD_BYTES", "PUT_ATTEMPTS",
    "PUT_FIRST_WAIT", "PUT_MAX_WAIT", "PUT_SECONDS", "SHARD_END", "KinesisConsumer", "KinesisTransport",
    "xflow_transports",
]


@hookimpl
def xflow_transports() -> list[type[Transport]]:
    return [KinesisTransport]
