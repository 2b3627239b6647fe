"""`setpay trace check` and split shipment (actors/trace/check.py Rule 5): once a purchase's
PRes went back to the cardholder, an AuthReq under its XID from the merchant is the next
shipment's subsequent authorization (its AuthToken in place of the PI): a new authorization
at the gateway under its own RRPID, no violation; the same AuthReq before the PRes still is.
"""

from __future__ import annotations

from pathlib import Path

from actors.trace.check import Checker
from actors.trace.fileformat import FORMAT_VERSION, TraceHeader, TraceRecord, TraceWriter
from actors.trace.show import messages
from protocol import codec
from protocol.messages import MessageType as M
from protocol.wrapper import MessageWrapper, amqp_type, make_header

PURCHASE = (  # (type, sender, routing key, reply-to of a request, correlation, rrpid)
    (M.PREQ, "x-wallet.main", "merchant.pos1", "wallet.main-peer", "p", 1),
    (M.AUTH_REQ, "x-merchant.pos1", "gateway", "merchant.pos1-gw", "a", 2),
    (M.AUTH_RES, "x-gateway.pg1", "merchant.pos1-gw", "", "a", 2),
    (M.PRES, "x-merchant.pos1", "wallet.main-peer", "", "p", 1),
)


def shipment(n: int) -> tuple[tuple[M, str, str, str, str, int], ...]:
    return (
        (M.AUTH_REQ, "x-merchant.pos1", "gateway", "merchant.pos1-gw", f"s{n}", 10 + n),
        (M.AUTH_RES, "x-gateway.pg1", "merchant.pos1-gw", "", f"s{n}", 10 + n),
    )


def _trace(path: Path, flow: tuple[tuple[M, str, str, str, str, int], ...]) -> None:
    writer = TraceWriter(path, TraceHeader(FORMAT_VERSION, 0, "v", "x-", [bytes(32)]))
    xid = bytes(31) + b"\x07"
    for n, (msg_type, user, key, reply_to, cid, rrpid) in enumerate(flow):
        header = make_header(1_700_000_000_000, xid=xid, rrpid=rrpid.to_bytes(32, "big"))
        body = codec.encode(MessageWrapper(header, msg_type, bytes(200), []))
        writer.append(TraceRecord(n * 100_000_000, "setpay.set", key, amqp_type(msg_type), cid,
                                  reply_to, user, body))  # fmt: skip
    writer.close()


def test_next_shipments_after_the_pres_are_no_violation(tmp_path: Path) -> None:
    path = tmp_path / "split.trace"
    _trace(path, PURCHASE + shipment(1) + shipment(2))
    assert list(Checker().run(messages(path)[1])) == []
    # the PRes copy landing before the AuthRes copy (held, then applied): the same
    late = tmp_path / "late.trace"
    _trace(late, (PURCHASE[0], PURCHASE[1], PURCHASE[3], PURCHASE[2], *shipment(1)))
    assert list(Checker().run(messages(late)[1])) == []


def test_a_second_authreq_before_the_pres_still_is(tmp_path: Path) -> None:
    path = tmp_path / "early.trace"
    _trace(path, PURCHASE[:3] + shipment(1) + PURCHASE[3:])
    found = list(Checker().run(messages(path)[1]))
    assert found and {v.prop for v in found} == {"order"}, found
