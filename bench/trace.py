"""`setpay bench trace`: record and replay throughput, and the memory of `show` and `check`
over a generated trace of a million messages.

Rule 1: the trace is synthetic but well-formed: per transaction a PReq, AuthReq, AuthRes and
PRes (each a SET wrapper with its own XID and RRPIDs, a 400-byte body standing for the
encrypted record no command opens), with the AMQP metadata a real one has, so ``check``
finds no violation. It is written from four encoded templates whose ids are patched in place
(every frame still gets its own CRC), so a million messages take seconds, not the codec's
minutes.
Rule 2: ``show`` and ``check`` run as the real command (``python -m cli trace …``) in a child
each; their peak RSS is the kernel's (``wait4``), next to the same command on a trace of one
transaction (the interpreter and its imports: the raw cost), with messages/s.
Rule 3: record and replay run against RabbitMQ in a throw-away vhost (deleted afterwards):
``record`` is the real recorder (actors/trace/record.py) on the trace exchange while the bench
publishes the synthetic envelopes to it; ``replay`` is the real replayer (the attack mode's
sender and classification) against a responder that answers each request with its recorded
answer, one request in flight as the replayer sends them. Both next to raw aio-pika
publishing the same bodies (the broker bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from urllib.parse import quote

import aio_pika

from actors.trace.fileformat import (
    FORMAT_VERSION,
    MAGIC,
    TraceHeader,
    TraceRecord,
    TraceWriter,
    frame,
    read_trace,
)
from actors.trace.record import record
from actors.trace.replay import replay_attack, requests
from broker import admin
from broker.connection import connect
from broker.topology import SET_EXCHANGE, TRACE_EXCHANGE, declare_common
from protocol import codec
from protocol.messages import MessageType as M
from protocol.wrapper import MessageWrapper, amqp_type, make_header
from setpay.config import Settings

BODY = bytes(400)
XID_MARK = b"\xa5" * 32
RRPID_MARK = b"\x5a" * 32
CID_WIDTH = 12
FLOW = (  # (type, sender, routing key, request?, cid kind, rrpid kind)
    (M.PREQ, "wallet.main", "merchant.pos1", True, "p", 0),
    (M.AUTH_REQ, "merchant.pos1", "gateway", True, "a", 1),
    (M.AUTH_RES, "gateway.pg1", "reply.merchant.pos1.bench", False, "a", 1),
    (M.PRES, "merchant.pos1", "reply.wallet.main.bench", False, "p", 0),
)
REPLY_TO = {"merchant.pos1": "reply.wallet.main.bench", "gateway": "reply.merchant.pos1.bench"}
# A message every 10 ms of trace time by default: 100 messages/s, about what the whole
# environment sustains (16 purchases/s of 6 envelopes: BENCHMARKS.md). `check` remembers one
# window of trace time (actors/trace/check.py Rule 5), so its memory is window x rate.
STEP_NS = 10_000_000


def _templates(prefix: str, date_ms: int) -> list[tuple[bytes, bytes]]:
    """Per FLOW step: the encoded record with marks for XID, RRPID and correlation id."""
    out = []
    for msg_type, user, key, request, kind, _ in FLOW:
        wrapper = codec.encode(MessageWrapper(
            make_header(date_ms, xid=XID_MARK, rrpid=RRPID_MARK), msg_type, BODY, []))  # fmt: skip
        cid_mark = "#" * CID_WIDTH + kind
        reply_to = REPLY_TO.get(key, "") if request else ""
        rec = TraceRecord(0, SET_EXCHANGE, key, amqp_type(msg_type), cid_mark, reply_to,
                          prefix + user, wrapper)  # fmt: skip
        out.append((codec.encode(rec), cid_mark.encode()))
    return out


def synthetic(path: Path, messages: int, *, prefix: str = "", date_ms: int = 0,
              step_ns: int = STEP_NS) -> int:  # fmt: skip
    """Write a well-formed trace of ``messages`` records (Rule 1); its size in bytes."""
    date_ms = date_ms or int(time.time() * 1000)
    templates = _templates(prefix, date_ms)
    salt = secrets.token_bytes(24)  # ids unique to this trace; the counter first, for `show`
    with path.open("xb") as out:
        out.write(MAGIC)
        out.write(frame(codec.encode(TraceHeader(FORMAT_VERSION, date_ms, "bench", prefix,
                                                 [bytes(32)]))))  # fmt: skip
        chunk: list[bytes] = []
        for n in range(messages):
            txn, step = divmod(n, len(FLOW))
            payload, cid_mark = templates[step]
            xid = txn.to_bytes(8, "big") + salt
            rrpid = (txn * 2 + FLOW[step][5]).to_bytes(8, "big") + salt
            cid = f"{txn:0{CID_WIDTH}d}{FLOW[step][4]}".encode()
            payload = (payload.replace(XID_MARK, xid).replace(RRPID_MARK, rrpid)
                       .replace(cid_mark, cid))  # fmt: skip
            payload = _with_time(payload, n * step_ns)
            chunk.append(len(payload).to_bytes(4, "big") + zlib.crc32(payload).to_bytes(4, "big")
                         + payload)  # fmt: skip
            if len(chunk) >= 4096:
                out.write(b"".join(chunk))
                chunk.clear()
        out.write(b"".join(chunk))
    return path.stat().st_size


def _with_time(payload: bytes, t_ns: int) -> bytes:
    """``payload`` (an encoded TraceRecord whose ``t_ns`` is 0) with ``t_ns`` set: the record
    is a msgpack array of 8 fields (header byte 0x98) whose first, ``t_ns``, is fixint 0."""
    return payload[:1] + codec.packb(t_ns) + payload[2:]


def _child_rss(args: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of ``setpay ARGS`` run as a child, output discarded;
    ``RuntimeError`` unless it exits 0 (``check``: no violation in a well-formed trace)."""
    env = {**os.environ, "SETPAY_LOG_LEVEL": "error"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=subprocess.DEVNULL,  # noqa: S603
                            stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"`setpay {' '.join(args[:2])}` exited {proc.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def memory(path: Path, messages: int, small: Path) -> dict[str, float]:
    """Rule 2: show and check over ``path``, next to the same on ``small``."""
    figures: dict[str, float] = {}
    for command in ("show", "check"):
        _, base = _child_rss(["trace", command, str(small)])
        seconds, rss = _child_rss(["trace", command, str(path)])
        figures[f"{command}_seconds"] = seconds
        figures[f"{command}_msgs_per_s"] = messages / seconds
        figures[f"{command}_peak_rss"] = rss
        figures[f"{command}_baseline_rss"] = base
    return figures


async def _raw_publish(url: str, bodies: list[bytes]) -> float:
    """Messages/s of raw aio-pika publishing ``bodies`` to the trace exchange (no consumer
    but a bound queue that drops them: the broker bound)."""
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=False)
        queue = await channel.declare_queue("", exclusive=True,
                                            arguments={"x-max-length": 1})  # fmt: skip
        await queue.bind(TRACE_EXCHANGE)
        exchange = await channel.get_exchange(TRACE_EXCHANGE)
        start = time.perf_counter()
        for body in bodies:
            await exchange.publish(aio_pika.Message(body), routing_key="x")
        await channel.declare_queue(queue.name, passive=True)  # a round trip: all arrived
        return len(bodies) / (time.perf_counter() - start)
    finally:
        await conn.close()


async def _record(settings: Settings, url: str, user: str, trace: Path, out: Path,
                  count: int) -> float:  # fmt: skip
    """Rule 3: the real recorder while the bench publishes ``count`` envelopes; messages/s
    from the first publish to the last record written."""
    recs = []
    for _, rec in read_trace(trace)[1]:
        recs.append(rec)
        if len(recs) >= count:
            break
    ready = asyncio.Event()

    def report(text: str) -> None:
        if text.startswith("recording to"):
            ready.set()

    task = asyncio.create_task(record(settings, out, count=len(recs), report=report,
                                      url=url, progress_every=3600))  # fmt: skip
    await ready.wait()
    bus = await connect(url, name="bench-trace-publisher")
    try:
        channel = await bus.channel(confirms=False)
        exchange = await channel.get_exchange(TRACE_EXCHANGE)
        start = time.perf_counter()
        for rec in recs:
            message = aio_pika.Message(rec.body, type=rec.msg_type, user_id=user,
                                       correlation_id=rec.correlation_id,
                                       reply_to=rec.reply_to or None)  # fmt: skip
            await exchange.publish(message, routing_key=rec.routing_key)
        progress = await asyncio.wait_for(task, 600)
        elapsed = time.perf_counter() - start
    finally:
        await bus.close()
    if progress.records != len(recs):
        raise RuntimeError(f"recorded {progress.records} of {len(recs)}")
    return len(recs) / elapsed


async def _responder(url: str, answers: dict[bytes, bytes]) -> aio_pika.abc.AbstractConnection:
    """Answers each request (by its body) with its recorded answer, on its reply-to key."""
    conn = await aio_pika.connect(url)
    channel = await conn.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=64)
    exchange = await channel.get_exchange(SET_EXCHANGE)
    queue = await channel.declare_queue("", exclusive=True)
    for key in {"merchant.pos1", "gateway"}:
        await queue.bind(SET_EXCHANGE, routing_key=key)

    async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        answer = answers.get(message.body)
        if answer is not None and message.reply_to:
            await exchange.publish(aio_pika.Message(answer, correlation_id=message.correlation_id,
                                                    type="set.reply"),
                                   routing_key=message.reply_to)  # fmt: skip

    await queue.consume(on)
    return conn


async def _replay(settings: Settings, url: str, trace: Path) -> tuple[int, float]:
    """Rule 3: the replayer over every request of ``trace``; (requests, requests/s)."""
    answers = {rec.body: recorded[0] for _, rec, recorded in requests(trace) if recorded}
    responder = await _responder(url, answers)
    try:
        start = time.perf_counter()
        results = await replay_attack(settings, trace, timeout=10.0, report=lambda _r: None)
        elapsed = time.perf_counter() - start
    finally:
        await responder.close()
    bad = [r for r in results if r.verdict != "stored"]
    if bad:
        raise RuntimeError(f"{len(bad)} replayed requests not answered as recorded: {bad[0]}")
    return len(results), len(results) / elapsed


def run(settings: Settings, messages: int, bus_messages: int, workdir: Path, *,
        step_ns: int = STEP_NS, bus: bool = True) -> dict[str, float]:  # fmt: skip
    """Every figure of the bench (Rules 1-3); ``bus=False``: the file figures only."""
    user = settings.broker_admin_user
    figures: dict[str, float] = {"messages": messages, "bus_messages": bus_messages,
                                 "msgs_per_trace_s": 1e9 / step_ns}  # fmt: skip
    big, small = workdir / "big.trace", workdir / "small.trace"
    start = time.perf_counter()
    figures["file_bytes"] = synthetic(big, messages, prefix="", step_ns=step_ns)
    figures["generate_seconds"] = time.perf_counter() - start
    synthetic(small, len(FLOW))
    figures.update(memory(big, messages, small))
    big.unlink()
    if not bus:
        return figures
    vhost = f"setpay-bench-trace-{secrets.token_hex(4)}"
    admin.create_vhost(vhost)
    try:
        admin.set_permissions(vhost, user, ".*", ".*", ".*")
        url = (f"amqp://{quote(user, safe='')}:"
               f"{quote(settings.broker_admin_password, safe='')}@127.0.0.1:5672/"
               f"{quote(vhost, safe='')}")  # fmt: skip
        data_dir = workdir / "data"
        (data_dir / "broker").mkdir(parents=True, mode=0o700)
        creds = data_dir / "broker" / "credentials.json"
        creds.write_text(json.dumps({user: settings.broker_admin_password}))
        creds.chmod(0o600)
        local = settings.replace(data_dir=data_dir, broker_vhost=vhost, broker_user_prefix="")
        bus_trace = workdir / "bus.trace"
        synthetic(bus_trace, bus_messages, prefix="")
        _retag(bus_trace, workdir / "bus-guest.trace", user)

        async def on_bus() -> None:
            conn = await aio_pika.connect(url)
            try:
                await declare_common(await conn.channel())
            finally:
                await conn.close()
            figures["record_msgs_per_s"] = await _record(
                local, url, user, workdir / "bus-guest.trace", workdir / "recorded.trace",
                bus_messages)  # fmt: skip
            bodies = [rec.body for _, rec in read_trace(workdir / "bus-guest.trace")[1]]
            figures["raw_publish_msgs_per_s"] = await _raw_publish(url, bodies)
            count, rate = await _replay(local, url, workdir / "bus-guest.trace")
            figures["replay_requests"] = count
            figures["replay_requests_per_s"] = rate
            figures["replay_msgs_per_s"] = rate * 2  # each request and its answer

        asyncio.run(on_bus())
    finally:
        admin.delete_vhost(vhost)
    return figures


def _retag(src: Path, dst: Path, user: str) -> None:
    """``src`` with every record's sender the bench's login (the broker checks user_id)."""
    header, records = read_trace(src)
    writer = TraceWriter(dst, header)
    for _, rec in records:
        writer.append(TraceRecord(rec.t_ns, rec.exchange, rec.routing_key, rec.msg_type,
                                  rec.correlation_id, rec.reply_to, user, rec.body))  # fmt: skip
    writer.close()


def lines(f: dict[str, float]) -> list[str]:
    mib = 1024 * 1024
    out = [
        f"trace of {int(f['messages']):,} messages ({f['msgs_per_trace_s']:,.0f} per second "
        f"of trace time): {f['file_bytes'] / mib:.0f} MiB, generated in "
        f"{f['generate_seconds']:.1f} s",
        *(
            f"{c:<6} {f[f'{c}_msgs_per_s']:>10,.0f} msg/s ({f[f'{c}_seconds']:.1f} s); "
            f"peak RSS {f[f'{c}_peak_rss'] / mib:.1f} MiB "
            f"(same command on a 4-message trace: {f[f'{c}_baseline_rss'] / mib:.1f} MiB)"
            for c in ("show", "check")
        ),
    ]
    if "record_msgs_per_s" not in f:
        return out
    return [
        *out,
        f"record {f['record_msgs_per_s']:>10,.0f} msg/s over {int(f['bus_messages']):,} "
        f"envelopes (raw aio-pika publish of the same: {f['raw_publish_msgs_per_s']:,.0f} msg/s)",
        f"replay {f['replay_msgs_per_s']:>10,.0f} msg/s ({f['replay_requests_per_s']:,.0f} "
        f"requests/s, one in flight, {int(f['replay_requests']):,} requests)",
    ]  # fmt: skip


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    with tempfile.TemporaryDirectory(prefix="setpay-bench-trace-") as tmp:
        figures = run(settings, args.messages, args.bus_messages, Path(tmp),
                      step_ns=int(args.step_ms * 1e6), bus=not args.no_bus)  # fmt: skip
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        print("\n".join(lines(figures)))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `setpay bench trace`."""
    parser = sub.add_parser("trace", help="trace record/replay throughput, show/check memory")
    parser.add_argument("--messages", type=int, default=1_000_000,
                        help="messages of the generated trace for show and check")  # fmt: skip
    parser.add_argument("--bus-messages", type=int, default=20_000,
                        help="envelopes recorded, and replayed, through RabbitMQ")  # fmt: skip
    parser.add_argument("--step-ms", type=float, default=STEP_NS / 1e6,
                        help="trace time between two generated messages (check's memory "
                        "is one window of trace time)")  # fmt: skip
    parser.add_argument("--no-bus", action="store_true", help="the file figures only")
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    parser.set_defaults(func=_cmd)
