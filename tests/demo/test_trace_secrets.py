"""The trace tap of the live environment never carries a PIN, a clear PIN block or a PAN.

Rule 1: a recorder queue is bound to the trace exchange before the purchases, so every SET
envelope the processes publish during them is copied to it (broker/trace.py Rule 2).
Rule 2: the purchases are an OPE PIN debit from the bank account with the right and the wrong
PIN and a credit purchase, through the thin clients, against the environment of
tests/demo/conftest.py.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from aio_pika.abc import AbstractIncomingMessage

from actors import demo_cases
from actors.demo_cases import DECLINED, SALE_APPROVED, WRONG_PIN
from actors.environment import DEBIT_NUMBER, DEBIT_PIN, LOAD_PANS
from broker.connection import connect
from broker.topology import TRACE_EXCHANGE
from protocol.certs import load_certificate
from protocol.messages import MessageType
from protocol.payment import AUTH_REQ_TYPE
from protocol.pin import encode_format0
from setpay.config import load
from tests.broker.test_trace import until
from tests.demo.test_demo_live import ACCOUNT_FORMS, PANS, PIN_TOKEN

pytestmark = pytest.mark.integration

PREQ_TYPE = str(int(MessageType.PREQ))


def _secret_forms() -> list[bytes]:
    """Every PAN, the bank account number and every clear PIN block of the environment, raw,
    as text, hex and UTF-16."""
    forms: list[bytes] = list(ACCOUNT_FORMS)
    for number in PANS:
        forms += [number.encode(), number[4:].encode(), number.encode("utf-16-le")]
    for pin in (DEBIT_PIN, WRONG_PIN):
        block = encode_format0(pin, DEBIT_NUMBER)
        forms += [pin.encode("utf-16-le"), block, block.hex().encode(),
                  block.hex().upper().encode()]  # fmt: skip
    return forms


async def test_trace_holds_no_pin_pin_block_or_pan(
    demo_run: tuple[Path, str], demo_env: dict[str, str]
) -> None:
    data_dir, out = demo_run
    assert "rows as expected" in out
    root = load_certificate((data_dir / "wallet" / "root.der").read_bytes())
    wallet, pos = demo_cases.connect_clients(load(demo_env))
    bus = await connect(load(demo_env).admin_url(), name="trace-secrets-test")  # the tap
    recorded: list[AbstractIncomingMessage] = []
    try:
        channel = await bus.channel()
        recorder = await channel.declare_queue(exclusive=True)
        await recorder.bind(TRACE_EXCHANGE)
        await asyncio.sleep(1.2)  # past every process's probe interval (Rule 1)
        erin = demo_cases.debit_shopper(wallet)
        alice = demo_cases.Shopper(wallet, "demo-alice", LOAD_PANS[0])
        await erin.card()
        await alice.card()
        right = await erin.debit(pos, "M-1002", 900, root, DEBIT_PIN)
        wrong = await erin.debit(pos, "M-1002", 900, root, WRONG_PIN)
        credit = await alice.buy(pos, "M-1001", 1_100)
        assert right.describe() == SALE_APPROVED
        assert wrong.describe() == DECLINED
        assert credit.describe() == demo_cases.APPROVED

        async def record(message: AbstractIncomingMessage) -> None:
            recorded.append(message)

        await recorder.consume(record, no_ack=True)
        # Each purchase is a PReq and an AuthReq at least: wait for all six copies.
        await until(lambda: sum(m.type == AUTH_REQ_TYPE for m in recorded) >= 3, timeout=10)
        await until(lambda: sum(m.type == PREQ_TYPE for m in recorded) >= 3, timeout=10)
    finally:
        await bus.close()
        await demo_cases.close_clients(wallet, pos)
    forms = _secret_forms()
    pin_tokens = [re.compile(PIN_TOKEN % p.encode()) for p in (DEBIT_PIN, WRONG_PIN)]
    for message in recorded:
        blob = message.body + repr(message.headers).encode()
        assert not any(form in blob for form in forms), message.type
        assert not any(token.search(blob) for token in pin_tokens), message.type
