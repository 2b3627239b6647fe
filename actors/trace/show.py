"""``setpay trace show`` and ``setpay trace diff``: listings and comparisons of traces.

Rule 1: ``show`` streams: one record in memory at a time; a line per message (time since the
first record, sender -> receiver, type, XID, RRPID, size, outcome of a response: ``ok`` or the
SET Error code read with ``read_error``), only what the wire shows.
Rule 2: ``diff`` compares two traces by transaction (XID; an Error counts for the XID of the
message it refused): XIDs present in one only, different message sequences (sender role,
type, in trace order), different outcomes (the responses' ``ok``/Error codes, as a multiset).
Messages without an XID (PInit, registration) are compared by count per type only.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from actors.trace.fileformat import TraceHeader, read_trace
from actors.trace.wire import WireMessage, is_request, short, view
from protocol.messages import MessageType as M


def messages(path: Path) -> tuple[TraceHeader, Iterator[WireMessage]]:
    """(header, wire view of every record) of a trace; ``TraceCorrupt`` after the good ones."""
    header, records = read_trace(path)
    return header, (view(off, rec, header.user_prefix) for off, rec in records)


def outcome(m: WireMessage) -> str:
    """``-`` for a request, ``ok`` for an answer, the code name for an Error."""
    if m.msg_type is None:
        return "?"
    if m.msg_type is M.ERROR:
        return m.error.name if m.error is not None else "ERROR"
    return "-" if is_request(m.msg_type) else "ok"


def _norm(type_name: str) -> str:
    return type_name.replace("_", "").replace("-", "").lower()


@dataclass(frozen=True, slots=True)
class Filter:
    """Which messages ``show`` lists (all given conditions must hold)."""

    msg_type: str | None = None
    xid: str | None = None
    party: str | None = None

    def __call__(self, m: WireMessage) -> bool:
        if self.msg_type and _norm(m.type_name) != _norm(self.msg_type):
            return False
        if self.xid:
            txn = m.txn.hex() if m.txn is not None else ""
            if not txn.startswith(self.xid.lower()):
                return False
        if self.party:
            names = {m.sender, m.sender_role, m.receiver, m.receiver_role}
            if self.party not in names:
                return False
        return True


def as_dict(m: WireMessage, t0: int) -> dict[str, object]:
    """One message for ``--json``."""
    return {
        "offset": m.offset, "t": round((m.t_ns - t0) / 1e9, 6), "sender": m.sender,
        "receiver": m.receiver, "type": m.type_name,
        "xid": m.txn.hex() if m.txn is not None else None,
        "rrpid": m.rrpid.hex() if m.rrpid is not None else None, "size": m.size,
        "correlation_id": m.correlation_id, "outcome": outcome(m),
        **({"problem": m.problem} if m.problem else {}),
    }  # fmt: skip


def line(m: WireMessage, t0: int) -> str:
    """One message for the listing (Rule 1)."""
    flow = f"{m.sender} -> {m.receiver}"
    return (f"{(m.t_ns - t0) / 1e9:10.3f}  {flow:<44} {m.type_name:<16} "
            f"{short(m.txn):<16} {short(m.rrpid):<16} {m.size:>7}  {outcome(m)}")  # fmt: skip


def show_lines(items: Iterator[WireMessage], keep: Filter, as_json: bool = False) -> Iterator[str]:
    """The listing of ``items`` that ``keep`` selects."""
    t0: int | None = None
    for m in items:
        if t0 is None:
            t0 = m.t_ns
        if keep(m):
            yield json.dumps(as_dict(m, t0)) if as_json else line(m, t0)


@dataclass(slots=True)
class Summary:
    """Per XID: the sequence of (sender role, type) and the outcomes; other types counted."""

    sequences: dict[str, list[str]]
    outcomes: dict[str, Counter[str]]
    untracked: Counter[str]


def summarize(items: Iterator[WireMessage]) -> Summary:
    summary = Summary({}, {}, Counter())
    for m in items:
        if m.txn is None:
            summary.untracked[m.type_name] += 1
            continue
        key = m.txn.hex()
        summary.sequences.setdefault(key, []).append(f"{m.sender_role}:{m.type_name}")
        results = summary.outcomes.setdefault(key, Counter())
        if m.msg_type is not None and not is_request(m.msg_type):
            results[f"{m.type_name}={outcome(m)}"] += 1
    return summary


def diff(a: Summary, b: Summary) -> Iterator[str]:
    """The differences of two summaries (Rule 2), one line each; none: identical."""
    for key in sorted(a.sequences.keys() - b.sequences.keys()):
        yield f"{key}  only in A: {' '.join(a.sequences[key])}"
    for key in sorted(b.sequences.keys() - a.sequences.keys()):
        yield f"{key}  only in B: {' '.join(b.sequences[key])}"
    for key in sorted(a.sequences.keys() & b.sequences.keys()):
        if a.sequences[key] != b.sequences[key]:
            yield (f"{key}  sequence differs: A {' '.join(a.sequences[key])} | "
                   f"B {' '.join(b.sequences[key])}")  # fmt: skip
        if a.outcomes[key] != b.outcomes[key]:
            fa = " ".join(sorted(a.outcomes[key].elements()))
            fb = " ".join(sorted(b.outcomes[key].elements()))
            yield f"{key}  outcome differs: A {fa} | B {fb}"
    for name in sorted(a.untracked.keys() | b.untracked.keys()):
        if a.untracked[name] != b.untracked[name]:
            yield (f"(no XID)  {name}: A {a.untracked[name]} | B {b.untracked[name]}")
