"""The trace tap: copies of SET envelopes on the trace exchange, only while a recorder listens.

Rule 1: a copy is a separate publish to ``setpay.trace`` after the SET publish was confirmed,
so ``mandatory`` on the SET exchange keeps reporting unroutable messages whether or not a
recorder is bound.
Rule 2: the copy is itself mandatory: a return means "nobody records", and the tap then sends
nothing but one probe per ``probe_interval`` -- the cost when nobody records. A recorder sees
every envelope published from ``probe_interval`` after it bound its queue.
Rule 3: tracing is best effort: a failed copy is logged and never fails the SET publish.
"""

from __future__ import annotations

import time

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange

from setpay.logs import get_logger

log = get_logger(component="broker.trace")

NO_ROUTE = 312
DEFAULT_PROBE_INTERVAL = 1.0


class TraceTap:
    """Per-connection state of the tap: whether a recorder was bound at the last copy."""

    def __init__(self, probe_interval: float = DEFAULT_PROBE_INTERVAL) -> None:
        self.probe_interval = probe_interval
        self.recording = False
        self.copies = 0
        self._next_probe = 0.0

    def wanted(self) -> bool:
        """Whether the next SET publish should be copied (recording, or a probe is due)."""
        return self.recording or time.monotonic() >= self._next_probe

    async def copy(
        self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str
    ) -> None:
        """Publish ``message`` to the trace exchange; learn from a return that nobody records."""
        try:
            await exchange.publish(message, routing_key, mandatory=True, timeout=2.0)
        except aiormq.exceptions.PublishError as exc:
            if getattr(exc.frame, "reply_code", None) == NO_ROUTE:
                self._off()
                return
            log.warning("trace_copy_failed", error=type(exc).__name__)
            self._off()
            return
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
            log.warning("trace_copy_failed", error=type(exc).__name__)
            self._off()
            return
        self.recording = True
        self.copies += 1

    def _off(self) -> None:
        self.recording = False
        self._next_probe = time.monotonic() + self.probe_interval
