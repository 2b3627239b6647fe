"""Protocol properties of a trace, from what the wire shows (``setpay trace check``).

Rule 1: order. Each transaction (XID) is run through the per-role tables of
``protocol/states.py``: a wallet<->merchant message moves the cardholder's and the merchant's
machine, a merchant<->gateway message the merchant's and the gateway's (each machine only for
the types its table knows; an Error for the machines its request moved). Outcomes (approved,
declined, sale) are inside encrypted or signed parts, so each machine is a *set* of possible
states: any outcome the table allows. A message without an XID (PInit, registration with the
CA) is checked as one exchange from any state of its table (the wire links registration
steps by nothing public).
Rule 2: the trace interleaves copies published by different processes, so a copy can land
after a message it caused (the merchant's PRes before the gateway's AuthRes copy). An event
the machines refuse is held and retried after each later event of its transaction; it is a
violation only if it still does not fit when the transaction is closed. Likewise a response
whose request was not seen yet waits for it.
Rule 3: sender. The broker-validated login (``user_id``) of every message must be of a role
that sends that type (``wire.SENDERS``); a response must come from the role its request was
routed to, go to the request's ``reply_to``, and be of a type that answers the request.
Rule 4: no RRPID answered twice with different bodies: two non-Error answers to requests
with one RRPID must be the same bytes (a refusal of a copy is an Error, which is allowed: it
has no effect). No request after an Error that left a machine in a terminal state. Every
response answers a request the trace holds.
Rule 5: memory is bounded by the traffic of one ``window`` of trace time (default twice the
protocol's date window: a request older than that is refused for freshness anyway), not by
the file's length: transactions, requests and answers quiet for longer are closed and
forgotten (a later message of a forgotten transaction is checked as the start of a new one).
Rule 6: split shipment. Once a purchase's PRes went back to the cardholder, an AuthReq under
its XID from the merchant is a next shipment's subsequent authorization (the AuthToken in the
PI's place, set-protocol.md §5): a new authorization, checked as its own transaction (the
gateway's table from its start, keyed by XID and the AuthReq's RRPID, its AuthRes with it).
What this cannot see: a next shipment whose purchase is older than the window (or than the
trace) is checked as the start of a purchase, and reported.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from actors.trace.wire import ONE_WAY, SENDERS, WireMessage, answers, is_request
from protocol import ids
from protocol.messages import MessageType as M
from protocol.states import TABLES, Direction, MachineKind, Table

DEFAULT_WINDOW_NS = 2 * ids.DEFAULT_WINDOW_MS * 1_000_000
MAX_HELD = 32

_K = MachineKind
# Which machines a message between two roles moves, and which role's side each machine is.
_EDGES: dict[frozenset[str], tuple[tuple[MachineKind, str], ...]] = {
    frozenset({"wallet", "merchant"}): ((_K.CARDHOLDER_PURCHASE, "wallet"),
                                        (_K.MERCHANT_ORDER, "merchant")),
    frozenset({"merchant", "gateway"}): ((_K.MERCHANT_ORDER, "merchant"),
                                         (_K.GATEWAY_TRANSACTION, "gateway")),
    frozenset({"wallet", "ca"}): ((_K.CA_REGISTRATION, "ca"),),
    frozenset({"merchant", "ca"}): ((_K.CA_REGISTRATION, "ca"),),
    frozenset({"gateway", "ca"}): ((_K.CA_REGISTRATION, "ca"),),
}  # fmt: skip


def _alphabet(table: Table) -> frozenset[M]:
    return frozenset(e.msg_type for moves in table.values() for e in moves if e.msg_type)


_ALPHABETS = {kind: _alphabet(table) for kind, (table, _) in TABLES.items()}


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken property: the transaction (XID hex, or ``rrpid:``/``cid:`` for messages
    without one), the record's byte offset, the property and what was seen."""

    txn: str
    offset: int
    prop: str
    detail: str

    def __str__(self) -> str:
        return f"{self.txn}  @{self.offset}  {self.prop}: {self.detail}"


@dataclass(slots=True)
class _Request:
    t_ns: int
    msg: WireMessage
    fed: tuple[MachineKind, ...] = ()


@dataclass(slots=True)
class _Txn:
    label: str
    any_state: bool
    machines: dict[MachineKind, frozenset[str]] = field(default_factory=dict)
    held: list[tuple[WireMessage, tuple[tuple[MachineKind, Direction], ...], str]] = field(
        default_factory=list
    )
    terminal: bool = False
    t_ns: int = 0
    paid: bool = False  # the PRes went back: a later AuthReq is a next shipment (Rule 6)


def _next(table: Table, states: frozenset[str], d: Direction, t: M) -> frozenset[str]:
    return frozenset(
        target for s in states for e, target in table[s].items()
        if e.direction == d and e.msg_type == t
    )  # fmt: skip


class Checker:
    """Feeds wire messages in trace order; yields violations as they become certain."""

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS) -> None:
        self.window_ns = window_ns
        self.messages = 0
        self._requests: OrderedDict[str, _Request] = OrderedDict()
        self._orphans: OrderedDict[str, list[WireMessage]] = OrderedDict()
        self._txns: OrderedDict[bytes, _Txn] = OrderedDict()
        self._answers: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, m: WireMessage) -> Iterator[Violation]:
        """Check one message (Rules 1-4); then close what the window left behind (Rule 5)."""
        self.messages += 1
        yield from self._evict(m.t_ns)
        if m.msg_type is None or m.problem:
            yield Violation(self._label(m), m.offset, "wire", m.problem or "not a SET wrapper")
            return
        yield from self._check_sender(m)
        if m.msg_type in ONE_WAY:
            return  # a broadcast (the CA's BCIDistribution) answers nothing and is not answered
        if is_request(m.msg_type):
            yield from self._request(m)
        else:
            request = self._requests.get(m.correlation_id)
            if request is None:
                self._orphans.setdefault(m.correlation_id, []).append(m)
                self._orphans.move_to_end(m.correlation_id)
            else:
                yield from self._response(m, request)

    def finish(self) -> Iterator[Violation]:
        """Close everything still open: held events and unmatched responses are violations."""
        for txn in list(self._txns.values()):
            yield from self._close(txn)
        self._txns.clear()
        for pending in self._orphans.values():
            for m in pending:
                yield self._orphan(m)
        self._orphans.clear()

    def run(self, messages: Iterable[WireMessage]) -> Iterator[Violation]:
        """Every violation of ``messages`` (fed in order, then finished)."""
        for m in messages:
            yield from self.feed(m)
        yield from self.finish()

    # -- the properties --------------------------------------------------------------------

    def _check_sender(self, m: WireMessage) -> Iterator[Violation]:
        assert m.msg_type is not None
        sends = SENDERS.get(m.sender_role)
        if not m.sender:
            yield Violation(self._label(m), m.offset, "sender", "no broker-validated user id")
        elif sends is None:
            yield Violation(self._label(m), m.offset, "sender",
                            f"{m.sender!r} is of no SET role")  # fmt: skip
        elif m.msg_type is not M.ERROR and m.msg_type not in sends:
            yield Violation(self._label(m), m.offset, "sender",
                            f"{m.type_name} sent by {m.sender!r}: the "
                            f"{m.sender_role} never sends it")  # fmt: skip

    def _request(self, m: WireMessage) -> Iterator[Violation]:
        assert m.msg_type is not None
        request = _Request(m.t_ns, m)
        self._requests[m.correlation_id] = request
        self._requests.move_to_end(m.correlation_id)
        txn = self._txn(m, m.sender_role, m.receiver_role)
        if txn is not None:
            if txn.terminal:
                yield Violation(txn.label, m.offset, "after-error",
                                f"{m.type_name} after a terminal Error")  # fmt: skip
            else:
                events = self._events(txn, m, m.sender_role, m.receiver_role, None)
                request.fed = tuple(kind for kind, _ in events)
                yield from self._apply(txn, m, events)
        for orphan in self._orphans.pop(m.correlation_id, []):
            yield from self._response(orphan, request)

    def _response(self, m: WireMessage, request: _Request) -> Iterator[Violation]:
        assert m.msg_type is not None and request.msg.msg_type is not None
        asked = request.msg
        label = self._label(asked, m)  # the transaction of the request answered
        if m.msg_type not in answers(asked.msg_type):
            yield Violation(label, m.offset, "response",
                            f"{m.type_name} does not answer {asked.type_name}")  # fmt: skip
        if m.sender_role != asked.receiver_role:
            yield Violation(label, m.offset, "sender",
                            f"{m.type_name} from {m.sender!r}, but {asked.type_name} went to "
                            f"{asked.receiver!r}")  # fmt: skip
        if m.receiver != asked.reply_to:
            yield Violation(label, m.offset, "response",
                            f"{m.type_name} sent to {m.receiver!r}, not to the requester's "
                            f"reply-to {asked.reply_to!r}")  # fmt: skip
        if m.msg_type is not M.ERROR and asked.rrpid is not None:
            seen = self._answers.get(asked.rrpid)
            if seen is not None and seen[1] != m.digest:
                yield Violation(label, m.offset, "rrpid",
                                f"RRPID {asked.rrpid.hex()} answered twice with different "
                                f"bodies ({m.type_name})")  # fmt: skip
            self._answers[asked.rrpid] = (m.t_ns, m.digest)
            self._answers.move_to_end(asked.rrpid)
        txn = self._txn(asked, asked.sender_role, asked.receiver_role)
        if txn is not None:
            # the answer moves the machines as from the side that was asked (a wrong
            # sender is the sender property's violation, above)
            events = self._events(txn, m, asked.receiver_role, asked.sender_role, request.fed)
            yield from self._apply(txn, m, events)
            if m.msg_type is M.ERROR and not txn.any_state and any(
                all(not TABLES[kind][0][s] for s in states) for kind, states in
                txn.machines.items() if kind in request.fed
            ):  # fmt: skip
                txn.terminal = True

    # -- machines --------------------------------------------------------------------------

    def _shipment(self, m: WireMessage) -> _Txn | None:
        """Rule 6: the transaction of a next shipment's AuthReq (and of its answer, asked with
        the same AuthReq), or None if ``m`` is no such AuthReq."""
        if m.msg_type is not M.AUTH_REQ or m.xid is None or m.rrpid is None:
            return None
        key = m.xid + b"/" + m.rrpid
        txn = self._txns.get(key)
        if txn is None:
            purchase = self._txns.get(m.xid)
            if purchase is None or not purchase.paid:
                return None
            txn = self._txns[key] = _Txn(f"{m.xid.hex()}/{m.rrpid.hex()[:16]}", False)
            txn.machines[_K.GATEWAY_TRANSACTION] = frozenset({TABLES[_K.GATEWAY_TRANSACTION][1]})
        self._txns.move_to_end(key)
        txn.t_ns = m.t_ns
        return txn

    def _txn(self, m: WireMessage, a: str, b: str) -> _Txn | None:
        edge = _EDGES.get(frozenset({a, b}))
        if edge is None:
            return None
        shipment = self._shipment(m)
        if shipment is not None:
            return shipment
        if m.xid is not None:
            key, label, any_state = m.xid, m.xid.hex(), False
        else:  # no XID on the wire: this one exchange, from any state (Rule 1)
            key = b"cid:" + m.correlation_id.encode()
            label, any_state = self._label(m), True
        txn = self._txns.get(key)
        if txn is None:
            txn = self._txns[key] = _Txn(label, any_state)
            for kind, _ in edge:
                table, initial = TABLES[kind]
                txn.machines[kind] = frozenset(table) if any_state else frozenset({initial})
        self._txns.move_to_end(key)
        txn.t_ns = m.t_ns
        return txn

    def _events(
        self, txn: _Txn, m: WireMessage, sender: str, receiver: str,
        fed: tuple[MachineKind, ...] | None,
    ) -> tuple[tuple[MachineKind, Direction], ...]:  # fmt: skip
        edge = _EDGES.get(frozenset({sender, receiver}), ())
        out = []
        for kind, side in edge:
            if kind not in txn.machines:
                continue
            if m.msg_type is M.ERROR:
                if fed is None or kind not in fed:
                    continue
            elif m.msg_type not in _ALPHABETS[kind]:
                continue
            out.append((kind, Direction.SEND if sender == side else Direction.RECEIVE))
        return tuple(out)

    def _try(
        self, txn: _Txn, m: WireMessage, events: tuple[tuple[MachineKind, Direction], ...]
    ) -> str:
        """Apply ``events`` to every machine at once, or none: '' or why not."""
        assert m.msg_type is not None
        moved = {}
        for kind, direction in events:
            table = TABLES[kind][0]
            states = _next(table, txn.machines[kind], direction, m.msg_type)
            if not states:
                now = ",".join(sorted(txn.machines[kind]))
                return (f"{kind.value}: {direction.name.lower()} {m.type_name} not allowed in "
                        f"state {now}")  # fmt: skip
            moved[kind] = states
        txn.machines.update(moved)
        return ""

    def _apply(
        self, txn: _Txn, m: WireMessage, events: tuple[tuple[MachineKind, Direction], ...]
    ) -> Iterator[Violation]:
        why = self._try(txn, m, events)
        if not why and m.msg_type is M.PRES:
            txn.paid = True
        if why:
            if len(txn.held) >= MAX_HELD:
                yield Violation(txn.label, m.offset, "order", why)
            else:
                txn.held.append((m, events, why))  # maybe a copy still on its way (Rule 2)
            return
        progress = True
        while progress and txn.held:
            progress = False
            for item in list(txn.held):
                if not self._try(txn, item[0], item[1]):
                    txn.held.remove(item)
                    progress = True
                    txn.paid = txn.paid or item[0].msg_type is M.PRES

    def _close(self, txn: _Txn) -> Iterator[Violation]:
        for m, _, why in txn.held:
            yield Violation(txn.label, m.offset, "order", why)
        txn.held.clear()

    # -- the window ------------------------------------------------------------------------

    def _evict(self, now_ns: int) -> Iterator[Violation]:
        horizon = now_ns - self.window_ns
        while self._txns:
            key, txn = next(iter(self._txns.items()))
            if txn.t_ns >= horizon:
                break
            del self._txns[key]
            yield from self._close(txn)
        while self._orphans:
            cid, pending = next(iter(self._orphans.items()))
            if pending[-1].t_ns >= horizon:
                break
            del self._orphans[cid]
            for m in pending:
                yield self._orphan(m)
        for store in (self._requests, self._answers):
            while store:
                key, value = next(iter(store.items()))  # type: ignore[arg-type]
                t_ns = value.t_ns if isinstance(value, _Request) else value[0]
                if t_ns >= horizon:
                    break
                del store[key]  # type: ignore[arg-type]

    def _orphan(self, m: WireMessage) -> Violation:
        return Violation(self._label(m), m.offset, "response",
                         f"{m.type_name} answers no request in the trace "
                         f"(correlation id {m.correlation_id!r})")  # fmt: skip

    @staticmethod
    def _label(m: WireMessage, other: WireMessage | None = None) -> str:
        for source in (m, other):
            if source is None:
                continue
            if source.txn is not None:
                return source.txn.hex()
        for source in (m, other):
            if source is not None and source.rrpid is not None:
                return f"rrpid:{source.rrpid.hex()}"
        return f"cid:{m.correlation_id}"
