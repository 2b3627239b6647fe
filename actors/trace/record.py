"""``setpay trace record``: every SET envelope of the live environment into a trace file.

Rule 1: the recorder binds an exclusive queue of its own to the trace exchange (the tap of
``broker/trace.py``) as the admin login of the environment, and announces it records only
once the tap's probe interval has passed since the bind: from then on every envelope any
process publishes on the SET exchange is copied to it (broker/trace.py Rule 2).
Rule 2: what is recorded is what the wire showed: the envelope bytes and the AMQP metadata
(routing key, type, correlation id, reply-to, the broker-validated user id), with the
recorder's monotonic clock. The exchange recorded is the SET exchange: the tap copies only
publishes to it (broker/connection.py Rule 4).
Rule 3: only SET envelopes are written. The tap carries nothing else: keystore RPC and the
thin-client APIs travel over the default exchange with direct reply-to, never the SET
exchange, so they are never copied (broker/topology.py Rule 3). The recorder still checks
every copy -- it must decode as a SET wrapper, its AMQP type must be the wrapper's, and
neither its routing key nor its publisher may be the keystore -- and drops (and counts)
anything else, so a misbehaving publisher on the trace exchange cannot put a secret of
another kind into a trace file.
Rule 4: constant memory: a bounded prefetch, each record written and flushed, then acked.
Stops on SIGINT (Ctrl-C), after ``count`` records or ``seconds``; the file then ends with
the last whole record.
Rule 5: the header names the environment's trust roots by SHA-256 thumbprint: every root
certificate (``root.der``) the environment keeps under its data dir (the wallet's copy,
the CA's export).
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aio_pika.abc import AbstractIncomingMessage

from actors.trace.fileformat import FORMAT_VERSION, TraceHeader, TraceRecord, TraceWriter
from actors.trace.wire import parse_wrapper, role_of
from broker.connection import connect
from broker.provision import operator_url
from broker.topology import SET_EXCHANGE, TRACE_EXCHANGE
from broker.trace import DEFAULT_PROBE_INTERVAL
from protocol.certs import cert_thumbprint, load_certificate
from protocol.errors import ProtocolError
from protocol.wrapper import amqp_type
from setpay.clock import CLOCK
from setpay.config import Settings

PREFETCH = 256
KEYSTORE = "keystore"


def trust_roots(data_dir: Path) -> list[bytes]:
    """Thumbprints of every root certificate under ``data_dir`` (Rule 5), deduplicated."""
    found: list[bytes] = []
    for path in sorted(data_dir.rglob("root*.der")):
        try:
            thumb = cert_thumbprint(load_certificate(path.read_bytes()))
        except (OSError, ValueError, ProtocolError):
            continue
        if thumb not in found:
            found.append(thumb)
    return found[:16]


def admissible(message: AbstractIncomingMessage, prefix: str) -> bool:
    """Whether a copy is a SET envelope the trace may hold (Rule 3)."""
    user = message.user_id or ""
    key = message.routing_key or ""
    if role_of(key) == KEYSTORE or role_of(user, prefix) == KEYSTORE:
        return False
    try:
        _, msg_type, _ = parse_wrapper(message.body)
    except ProtocolError:
        return False
    return message.type == amqp_type(msg_type)


@dataclass(slots=True)
class Progress:
    """What the recorder did so far."""

    records: int = 0
    bytes: int = 0
    dropped: int = 0
    started: float = 0.0

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (f"{self.records} messages, {self.bytes} bytes, "
                f"{self.records / elapsed:.1f} msg/s, {self.dropped} dropped")  # fmt: skip


async def record(
    settings: Settings,
    out: Path,
    *,
    count: int | None = None,
    seconds: float | None = None,
    report: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    progress_every: float = 1.0,
    url: str | None = None,
) -> Progress:
    """Record into the new file ``out`` until SIGINT, ``count`` records or ``seconds``;
    ``url``: another login than the environment's operators' (the bench's own vhost)."""
    header = TraceHeader(FORMAT_VERSION, CLOCK.now_ms(), settings.broker_vhost,
                         settings.broker_user_prefix, trust_roots(settings.data_dir))  # fmt: skip
    prefix = settings.broker_user_prefix
    bus = await connect(
        url or operator_url(settings.data_dir, settings.broker_vhost, settings.amqp_url,
                            user_prefix=prefix),
        name="setpay-trace-record",
    )  # fmt: skip
    writer: TraceWriter | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    progress = Progress()
    try:
        channel = await bus.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(
            f"operator.trace.{secrets.token_hex(6)}", exclusive=True, auto_delete=True
        )
        await queue.bind(TRACE_EXCHANGE)
        writer = TraceWriter(out, header)
        progress.bytes = writer.bytes

        async def on_copy(message: AbstractIncomingMessage) -> None:
            assert writer is not None
            if stop.is_set():
                return  # not acked: goes with the exclusive queue
            if admissible(message, prefix):
                writer.append(TraceRecord(
                    time.monotonic_ns(), SET_EXCHANGE, message.routing_key or "",
                    message.type or "", message.correlation_id or "", message.reply_to or "",
                    message.user_id or "", message.body,
                ))  # fmt: skip
                progress.records = writer.records
                progress.bytes = writer.bytes
            else:
                progress.dropped += 1
            await message.ack()
            if count is not None and progress.records >= count:
                stop.set()

        loop.add_signal_handler(signal.SIGINT, stop.set)
        await queue.consume(on_copy)
        await asyncio.sleep(DEFAULT_PROBE_INTERVAL + 0.2)  # the tap's probe interval (Rule 1)
        progress.started = time.monotonic()
        report(f"recording to {out} (vhost {settings.broker_vhost})")
        deadline = None if seconds is None else time.monotonic() + seconds
        while not stop.is_set():
            wait = progress_every
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                report(progress.line())
        stop.set()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await bus.close()
        if writer is not None:
            writer.close()
    report(f"stopped: {progress.line()}")
    return progress
