"""`setpay trace check` and the CA's one-way BCIDistribution (actors/trust.py Rule 5).

A broadcast answers nothing and is not answered: from a CA login it is no violation (neither
an orphan response nor an unanswered request); from any other role it is a ``sender``
violation, as every type a role never sends.
"""

from __future__ import annotations

from pathlib import Path

from actors.trace.check import Checker
from actors.trace.fileformat import FORMAT_VERSION, TraceHeader, TraceRecord, TraceWriter
from actors.trace.show import messages
from protocol import codec
from protocol.messages import MessageType as M
from protocol.wrapper import MessageWrapper, amqp_type, make_header


def _trace(path: Path, senders: list[str]) -> None:
    writer = TraceWriter(path, TraceHeader(FORMAT_VERSION, 0, "v", "x-", [bytes(32)]))
    kind = amqp_type(M.BCI_DISTRIBUTION)
    wrapper = MessageWrapper(make_header(1_700_000_000_000), M.BCI_DISTRIBUTION, bytes(100), [])
    for n, user in enumerate(senders):
        record = TraceRecord(
            n * 1_000_000, "setpay.set", "revocation.alpha", kind, f"c{n}", "", user,
            codec.encode(wrapper),
        )  # fmt: skip
        writer.append(record)
    writer.close()


def test_a_ca_broadcast_is_no_violation_another_senders_is(tmp_path: Path) -> None:
    path = tmp_path / "bcast.trace"
    _trace(path, ["x-ca.main", "x-ca.main", "x-merchant.pos1"])
    found = list(Checker().run(messages(path)[1]))
    assert [(v.prop, "merchant" in v.detail) for v in found] == [("sender", True)], found
