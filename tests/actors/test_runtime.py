"""The actor runtime on real RabbitMQ: dispatch, SET Error replies, dead letters, lifecycle,
and `setpay up/down` running the echo actor as a real separate process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid

import pytest

from actors.runtime_echo import EchoActor
from actors.supervisor import SETPAY
from broker.connection import connect
from broker.credentials import CredentialStore, credentials_path
from broker.consumer import CODE_HEADER, QUEUE_HEADER
from broker.topology import DEAD_LETTER_QUEUE, SET_EXCHANGE, inbox_prefix
from protocol.errors import ErrorCode
from protocol.messages import Error, ErrorTBS
from protocol.set_error import ERROR_TYPE, read_error
from protocol.wrapper import decode_message

pytestmark = pytest.mark.integration


async def requester(url: str):
    """A bus plus a reply queue of its own login (an inbox ``reply.<login>.<hex>``: the
    runtime answers only into an inbox of the login that asked)."""
    bus = await connect(url, name="tester")
    key = f"{inbox_prefix(bus.user_id)}{uuid.uuid4().hex[:8]}"
    channel = await bus.channel()
    queue = await channel.declare_queue(key, exclusive=True, auto_delete=True)
    await queue.bind(SET_EXCHANGE, routing_key=key)
    return bus, key, queue


async def test_actor_dispatches_replies_and_maps_protocol_errors(broker_vhost) -> None:
    actor = EchoActor("echo", uuid.uuid4().hex[:8], broker_vhost.url)
    await actor.start()
    bus, reply_key, replies = await requester(broker_vhost.url)
    try:
        assert actor.health()["ready"] is True
        target = f"echo.{actor.instance}"
        await bus.publish(target, bus.message(b"ping", msg_type="Echo", reply_to=reply_key),
                          exchange=SET_EXCHANGE)
        await bus.publish("echo", bus.message(b"x", msg_type="Fail", reply_to=reply_key),
                          exchange=SET_EXCHANGE)
        got = []
        for _ in range(2):
            message = await asyncio.wait_for(_get(replies), 10)
            got.append(message)
        by_type = {m.type: m for m in got}
        assert by_type["EchoReply"].body == b"ping"
        assert by_type["EchoReply"].user_id == "guest"
        # the runtime's fallback is the one SET Error record, read by the one reader
        error = decode_message(by_type[ERROR_TYPE].body, now_ms=_now_ms()).body
        assert isinstance(error, Error)
        tbs, verified = read_error(error, _now_ms())
        assert isinstance(tbs, ErrorTBS) and tbs.code is ErrorCode.INVALID_FIELD
        assert not verified
        # unknown type: dead-lettered with its reason, actor keeps answering
        await bus.publish(target, bus.message(b"?", msg_type="Nope"), exchange=SET_EXCHANGE)
        await bus.publish(target, bus.message(b"again", msg_type="Echo", reply_to=reply_key),
                          exchange=SET_EXCHANGE)
        message = await asyncio.wait_for(_get(replies), 10)
        assert message.body == b"again"
        channel = await bus.channel()
        dead = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
        record = None
        while record is None:
            m = await dead.get(fail=False)
            if m is None:
                await asyncio.sleep(0.05)
                continue
            await m.ack()
            if m.headers.get(QUEUE_HEADER) == f"set.echo.{actor.instance}":
                record = m
        assert record.headers[CODE_HEADER] == "unknown-type"
        assert actor.health()["dead_lettered"] == 1
    finally:
        await actor.stop()
        await bus.close()
    assert actor.health()["state"] == "stopped"


async def _get(queue):
    while True:
        message = await queue.get(fail=False)
        if message is not None:
            await message.ack()
            return message
        await asyncio.sleep(0.02)


async def test_drain_finishes_in_flight_work(broker_vhost) -> None:
    actor = EchoActor("echo", uuid.uuid4().hex[:8], broker_vhost.url)
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def slow(delivery):
        entered.set()
        await gate.wait()
        return "SlowReply", b"done"

    await actor.start()
    actor.on("Slow", slow)
    bus, reply_key, replies = await requester(broker_vhost.url)
    try:
        await bus.publish(f"echo.{actor.instance}",
                          bus.message(b"", msg_type="Slow", reply_to=reply_key),
                          exchange=SET_EXCHANGE)
        await asyncio.wait_for(entered.wait(), 10)
        stopping = asyncio.create_task(actor.stop())
        await asyncio.sleep(0.1)
        assert not stopping.done() and actor.health()["in_flight"] == 1
        gate.set()
        await asyncio.wait_for(stopping, 10)
        message = await asyncio.wait_for(_get(replies), 10)
        assert message.body == b"done"
    finally:
        await bus.close()


def setpay(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SETPAY, *args], env=env,
                          capture_output=True, text=True, timeout=90, check=False)


async def test_up_runs_echo_as_a_separate_process_and_down_stops_it(
    broker_vhost, tmp_path
) -> None:
    # No `broker init` here: the child runs with the configured login, which must not be the
    # admin's (the supervisor keeps that one to itself and would hand the child none).
    echo_url = broker_vhost.add_user(f"echo-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex)
    # The supervisor takes its lock as the operators' login, never the admin's.
    operator, _ = CredentialStore(credentials_path(tmp_path)).ensure(
        broker_vhost.prefix + "operator.main")
    broker_vhost.add_user("operator.main", operator)
    env = {**os.environ, "SETPAY_DATA_DIR": str(tmp_path), "SETPAY_AMQP_URL": echo_url,
           "SETPAY_BROKER_VHOST": broker_vhost.name,  # where the supervisor takes its lock
           "SETPAY_BROKER_USER_PREFIX": broker_vhost.prefix, "SETPAY_LOG_FORMAT": "json"}
    up = await asyncio.to_thread(setpay, ["up", "--roles", "echo", "--timeout", "30"], env)
    run = tmp_path / "run"
    try:
        assert up.returncode == 0, up.stderr
        health = json.loads((run / "echo.main.health").read_text())
        assert health["ready"] is True and health["pid"] != os.getpid()
        child_pid = int((run / "echo.main.pid").read_text())
        assert child_pid == health["pid"]
        bus, reply_key, replies = await requester(broker_vhost.url)
        try:
            await bus.publish("echo.main", bus.message(b"hi", msg_type="Echo",
                                                       reply_to=reply_key),
                              exchange=SET_EXCHANGE)
            message = await asyncio.wait_for(_get(replies), 10)
            assert message.body == b"hi"
        finally:
            await bus.close()
    finally:
        down = await asyncio.to_thread(setpay, ["down", "--grace", "10"], env)
    assert down.returncode == 0, down.stderr
    assert "supervisor: terminated" in down.stdout
    assert not list(run.glob("*.pid"))
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)
    log = (run / "echo.main.log").read_text()
    assert "service_stopped" in log  # stopped by SIGTERM through drain, not killed


def test_run_refuses_unknown_and_unprepared_roles(tmp_path) -> None:
    """Unknown roles and roles whose operator set-up is missing fail with one clear line."""
    env = {**os.environ, "SETPAY_DATA_DIR": str(tmp_path)}
    unknown = setpay(["run", "nosuchrole"], env)
    assert unknown.returncode == 2 and "unknown role" in unknown.stderr
    unprepared = setpay(["run", "gateway"], env)
    assert unprepared.returncode == 2, unprepared.stderr
    assert "setpay gateway register" in unprepared.stderr
    assert "Traceback" not in unprepared.stderr


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
