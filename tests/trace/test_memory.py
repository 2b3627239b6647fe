"""`show` and `check` stream: a synthetic 40,000-record trace of about 23 MB (a purchase's
PReq, AuthReq, AuthRes and PRes per XID, one record every 100 ms of trace time) is listed and
checked with a tracemalloc peak under a fixed bound far below the file's size.

Rule 1: the bound is on memory, never on time; the records are well-formed so `check` finds
no violation, and every one of them is seen (counted).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

from actors.trace.check import Checker
from actors.trace.fileformat import FORMAT_VERSION, TraceHeader, TraceRecord, TraceWriter
from actors.trace.show import Filter, messages, show_lines
from protocol import codec
from protocol.messages import MessageType as M
from protocol.wrapper import MessageWrapper, amqp_type, make_header

RECORDS = 40_000  # 4,000 s of trace time: many times the check window, and 2x the bound in bytes
BOUND = 12 * 1024 * 1024
STEP_NS = 100_000_000
BODY = bytes(400)  # stands for the (encrypted) body record, which no command opens

FLOW = (  # (type, sender, routing key, request?)
    (M.PREQ, "x-wallet.main", "merchant.pos1", True),
    (M.AUTH_REQ, "x-merchant.pos1", "gateway", True),
    (M.AUTH_RES, "x-gateway.pg1", "merchant.pos1-gw", False),
    (M.PRES, "x-merchant.pos1", "wallet.main-peer", False),
)
REPLY_TO = {"merchant.pos1": "wallet.main-peer", "gateway": "merchant.pos1-gw"}


def synthetic(path: Path) -> None:
    writer = TraceWriter(path, TraceHeader(FORMAT_VERSION, 0, "v", "x-", [bytes(32)]))
    for n in range(RECORDS):
        txn, step = divmod(n, len(FLOW))
        msg_type, user, key, request = FLOW[step]
        xid = txn.to_bytes(32, "big")
        rrpid = (txn * 2 + (step in (1, 2))).to_bytes(32, "big")
        cid = f"c{txn}.{'p' if step in (0, 3) else 'a'}"
        header = make_header(1_700_000_000_000, xid=xid, rrpid=rrpid)
        body = codec.encode(MessageWrapper(header, msg_type, BODY, []))
        writer.append(
            TraceRecord(
                n * STEP_NS,
                "setpay.set",
                key,
                amqp_type(msg_type),
                cid,
                REPLY_TO.get(key, "") if request else "",
                user,
                body,
            )
        )
    writer.close()


def peak(run: Callable[[], int]) -> tuple[int, int]:
    """(result, tracemalloc peak in bytes) of ``run``."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_show_and_check_stream_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.trace"
    synthetic(path)
    assert path.stat().st_size > BOUND  # the file alone would not fit in the bound

    def show() -> int:
        return sum(1 for _ in show_lines(messages(path)[1], Filter()))

    def check() -> int:
        checker = Checker()
        found = list(checker.run(messages(path)[1]))
        assert found == [], found[:3]
        return checker.messages

    shown, show_peak = peak(show)
    checked, check_peak = peak(check)
    print(f"file {path.stat().st_size} B; show peak {show_peak} B; check peak {check_peak} B")
    assert shown == checked == RECORDS
    assert show_peak < BOUND and check_peak < BOUND
