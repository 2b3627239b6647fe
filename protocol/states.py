"""Per-role protocol state machines as explicit transition tables (after h11's ``_state.py``).

Rule 1: the protocol's state logic is the tables of this file. A machine moves only along an
entry of its table; any other (state, event) pair raises ``ProtocolError(stateViolation)`` and
leaves the state unchanged. The merchant's orders and payments, the wallet's purchases and
the gateway's payments and batches after authorization (actors/gateway/capture.py, batch.py)
move through their tables; the gateway's authorization ledger and the CA still keep their
own records (their tables here are exercised by tests and the trace checker).
Rule 2: an event is a message sent or received (``Direction`` + ``MessageType``), refined by
an ``Outcome`` where one message type can end in different states (an AuthRes that approves
or declines), or a ``LOCAL`` outcome for what no message carries (a batch is settled).
Rule 3: a machine's state is a small value (``MachineState``) that encodes with the codec, so
actors persist it next to the transaction and resume after a restart.
Rule 4: sending an Error answers a message without acting on it, so it returns to the state
before that message; never answer an Error with an Error (no table has such an entry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Annotated, NamedTuple

from protocol import codec
from protocol.codec import MaxLen
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import MessageType as M


class Direction(IntEnum):
    SEND = 1
    RECEIVE = 2
    LOCAL = 3  # an event of this party's own, carried by no message


class Outcome(IntEnum):
    """How a message ended, where the table needs to know (the business code decides)."""

    APPROVED = 1
    DECLINED = 2
    SALE = 3  # AuthRes of a sale: authorized and captured at once
    PARTIAL = 4  # a reversal that leaves part of the amount
    FULL = 5  # a reversal of the whole amount
    OPEN = 6  # BatchAdmin operations
    PURGE = 7
    CLOSE = 8
    QUERY = 9  # BatchAdmin summary/detail only
    SETTLED = 10  # LOCAL: the acquirer settled a closed batch
    ISSUED = 11  # CertRes outcomes
    PENDING = 12
    REJECTED = 13


class Event(NamedTuple):
    direction: Direction
    msg_type: M | None
    outcome: Outcome | None = None


class MachineKind(StrEnum):
    CARDHOLDER_PURCHASE = "cardholder_purchase"
    MERCHANT_ORDER = "merchant_order"
    MERCHANT_PAYMENT = "merchant_payment"
    GATEWAY_TRANSACTION = "gateway_transaction"
    GATEWAY_BATCH = "gateway_batch"
    CA_REGISTRATION = "ca_registration"


def _send(t: M, outcome: Outcome | None = None) -> Event:
    return Event(Direction.SEND, t, outcome)


def _recv(t: M, outcome: Outcome | None = None) -> Event:
    return Event(Direction.RECEIVE, t, outcome)


def _local(outcome: Outcome) -> Event:
    return Event(Direction.LOCAL, None, outcome)


Table = Mapping[str, Mapping[Event, str]]


# --- cardholder: one purchase -----------------------------------------------------------


class CardholderPurchase(StrEnum):
    IDLE = "idle"
    PINIT_SENT = "pinit_sent"
    PINIT_RECEIVED = "pinit_received"
    PREQ_SENT = "preq_sent"
    DONE = "done"
    INQUIRING = "inquiring"
    ERROR = "error"


_C = CardholderPurchase
CARDHOLDER_PURCHASE: Table = {
    _C.IDLE: {
        _send(M.PINIT_REQ): _C.PINIT_SENT,
        _send(M.PREQ): _C.PREQ_SENT,  # no PInit: the cardholder made the XID itself
    },
    _C.PINIT_SENT: {_recv(M.PINIT_RES): _C.PINIT_RECEIVED, _recv(M.ERROR): _C.ERROR},
    _C.PINIT_RECEIVED: {_send(M.PREQ): _C.PREQ_SENT, _send(M.ERROR): _C.ERROR},
    _C.PREQ_SENT: {
        _recv(M.PRES): _C.DONE,
        _recv(M.ERROR): _C.ERROR,
        _send(M.INQ_REQ): _C.PREQ_SENT,  # still waiting: asking does not change the purchase
    },
    _C.DONE: {_send(M.INQ_REQ): _C.INQUIRING},
    _C.INQUIRING: {
        _recv(M.INQ_RES): _C.DONE,
        _recv(M.ERROR): _C.DONE,  # a failed inquiry leaves the purchase as it was
    },
    _C.ERROR: {},
}


# --- merchant: one order session --------------------------------------------------------


class MerchantOrder(StrEnum):
    IDLE = "idle"
    PINIT_RECEIVED = "pinit_received"
    PINIT_SENT = "pinit_sent"
    PREQ_RECEIVED = "preq_received"
    AUTH_SENT = "auth_sent"
    AUTHORIZED = "authorized"
    AUTH_FAILED = "auth_failed"
    DONE = "done"
    INQ_RECEIVED = "inq_received"
    ERROR = "error"


_O = MerchantOrder
MERCHANT_ORDER: Table = {
    _O.IDLE: {_recv(M.PINIT_REQ): _O.PINIT_RECEIVED, _recv(M.PREQ): _O.PREQ_RECEIVED},
    _O.PINIT_RECEIVED: {_send(M.PINIT_RES): _O.PINIT_SENT, _send(M.ERROR): _O.ERROR},
    _O.PINIT_SENT: {_recv(M.PREQ): _O.PREQ_RECEIVED, _recv(M.ERROR): _O.ERROR},
    _O.PREQ_RECEIVED: {
        _send(M.AUTH_REQ): _O.AUTH_SENT,
        _send(M.PRES): _O.DONE,  # order rejected, or received without authorization
        _send(M.ERROR): _O.ERROR,
    },
    _O.AUTH_SENT: {
        _recv(M.AUTH_RES): _O.AUTHORIZED,
        _recv(M.ERROR): _O.AUTH_FAILED,
    },
    _O.AUTHORIZED: {_send(M.PRES): _O.DONE},
    _O.AUTH_FAILED: {_send(M.PRES): _O.DONE},
    _O.DONE: {_recv(M.INQ_REQ): _O.INQ_RECEIVED},
    _O.INQ_RECEIVED: {_send(M.INQ_RES): _O.DONE, _send(M.ERROR): _O.DONE},
    _O.ERROR: {},
}


# --- merchant: one authorized payment after its order ----------------------------------


class MerchantPayment(StrEnum):
    """The merchant's view of an authorization after PRes: what it asked the gateway, and
    what the gateway answered (a ``*_SENT`` state waits for an answer and resends the same
    request until one comes)."""

    AUTHORIZED = "authorized"
    CAPTURE_SENT = "capture_sent"
    AUTH_REV_SENT = "auth_rev_sent"
    REVERSED = "reversed"
    CAPTURED = "captured"
    CAP_REV_SENT = "cap_rev_sent"
    CREDIT_SENT = "credit_sent"
    CREDITED = "credited"
    MORE_CREDIT_SENT = "more_credit_sent"
    CRED_REV_SENT = "cred_rev_sent"


_MP = MerchantPayment
MERCHANT_PAYMENT: Table = {
    _MP.AUTHORIZED: {_send(M.CAP_REQ): _MP.CAPTURE_SENT, _send(M.AUTH_REV_REQ): _MP.AUTH_REV_SENT},
    _MP.CAPTURE_SENT: {
        _recv(M.CAP_RES, Outcome.APPROVED): _MP.CAPTURED,
        _recv(M.CAP_RES, Outcome.DECLINED): _MP.AUTHORIZED,
        _recv(M.ERROR): _MP.AUTHORIZED,
    },
    _MP.AUTH_REV_SENT: {
        _recv(M.AUTH_REV_RES, Outcome.PARTIAL): _MP.AUTHORIZED,
        _recv(M.AUTH_REV_RES, Outcome.FULL): _MP.REVERSED,
        _recv(M.AUTH_REV_RES, Outcome.DECLINED): _MP.AUTHORIZED,
        _recv(M.ERROR): _MP.AUTHORIZED,
    },
    _MP.CAPTURED: {_send(M.CRED_REQ): _MP.CREDIT_SENT, _send(M.CAP_REV_REQ): _MP.CAP_REV_SENT},
    _MP.CAP_REV_SENT: {
        _recv(M.CAP_REV_RES, Outcome.APPROVED): _MP.AUTHORIZED,
        _recv(M.CAP_REV_RES, Outcome.DECLINED): _MP.CAPTURED,
        _recv(M.ERROR): _MP.CAPTURED,
    },
    _MP.CREDIT_SENT: {
        _recv(M.CRED_RES, Outcome.APPROVED): _MP.CREDITED,
        _recv(M.CRED_RES, Outcome.DECLINED): _MP.CAPTURED,
        _recv(M.ERROR): _MP.CAPTURED,
    },
    _MP.CREDITED: {
        _send(M.CRED_REQ): _MP.MORE_CREDIT_SENT,
        _send(M.CRED_REV_REQ): _MP.CRED_REV_SENT,
    },
    _MP.MORE_CREDIT_SENT: {
        _recv(M.CRED_RES, Outcome.APPROVED): _MP.CREDITED,
        _recv(M.CRED_RES, Outcome.DECLINED): _MP.CREDITED,
        _recv(M.ERROR): _MP.CREDITED,
    },
    _MP.CRED_REV_SENT: {
        _recv(M.CRED_REV_RES, Outcome.FULL): _MP.CAPTURED,
        _recv(M.CRED_REV_RES, Outcome.PARTIAL): _MP.CREDITED,
        _recv(M.CRED_REV_RES, Outcome.DECLINED): _MP.CREDITED,
        _recv(M.ERROR): _MP.CREDITED,
    },
    _MP.REVERSED: {},
}


# --- gateway: one authorization and what follows it -------------------------------------


class GatewayTransaction(StrEnum):
    NEW = "new"
    AUTH_RECEIVED = "auth_received"
    AUTHORIZED = "authorized"
    DECLINED = "declined"
    CAPTURE_RECEIVED = "capture_received"
    AUTH_REV_RECEIVED = "auth_rev_received"
    REVERSED = "reversed"
    CAPTURED = "captured"
    CAP_REV_RECEIVED = "cap_rev_received"
    CREDIT_RECEIVED = "credit_received"
    CREDITED = "credited"
    MORE_CREDIT_RECEIVED = "more_credit_received"
    CRED_REV_RECEIVED = "cred_rev_received"
    ERROR = "error"


_G = GatewayTransaction
_A, _D = Outcome.APPROVED, Outcome.DECLINED
GATEWAY_TRANSACTION: Table = {
    _G.NEW: {_recv(M.AUTH_REQ): _G.AUTH_RECEIVED},
    _G.AUTH_RECEIVED: {
        _send(M.AUTH_RES, _A): _G.AUTHORIZED,
        _send(M.AUTH_RES, _D): _G.DECLINED,
        _send(M.AUTH_RES, Outcome.SALE): _G.CAPTURED,
        _send(M.ERROR): _G.ERROR,
    },
    _G.AUTHORIZED: {
        _recv(M.CAP_REQ): _G.CAPTURE_RECEIVED,
        _recv(M.AUTH_REV_REQ): _G.AUTH_REV_RECEIVED,
    },
    _G.CAPTURE_RECEIVED: {
        _send(M.CAP_RES, _A): _G.CAPTURED,
        _send(M.CAP_RES, _D): _G.AUTHORIZED,
        _send(M.ERROR): _G.AUTHORIZED,
    },
    _G.AUTH_REV_RECEIVED: {
        _send(M.AUTH_REV_RES, Outcome.PARTIAL): _G.AUTHORIZED,
        _send(M.AUTH_REV_RES, Outcome.FULL): _G.REVERSED,
        _send(M.AUTH_REV_RES, _D): _G.AUTHORIZED,
        _send(M.ERROR): _G.AUTHORIZED,
    },
    _G.CAPTURED: {
        _recv(M.CAP_REV_REQ): _G.CAP_REV_RECEIVED,
        _recv(M.CRED_REQ): _G.CREDIT_RECEIVED,
    },
    _G.CAP_REV_RECEIVED: {
        _send(M.CAP_REV_RES, _A): _G.AUTHORIZED,  # the capture is undone, the auth remains
        _send(M.CAP_REV_RES, _D): _G.CAPTURED,
        _send(M.ERROR): _G.CAPTURED,
    },
    _G.CREDIT_RECEIVED: {
        _send(M.CRED_RES, _A): _G.CREDITED,
        _send(M.CRED_RES, _D): _G.CAPTURED,
        _send(M.ERROR): _G.CAPTURED,
    },
    _G.CREDITED: {
        _recv(M.CRED_REQ): _G.MORE_CREDIT_RECEIVED,  # Σ credits ≤ captured: the actor's check
        _recv(M.CRED_REV_REQ): _G.CRED_REV_RECEIVED,
    },
    _G.MORE_CREDIT_RECEIVED: {
        _send(M.CRED_RES, _A): _G.CREDITED,
        _send(M.CRED_RES, _D): _G.CREDITED,
        _send(M.ERROR): _G.CREDITED,
    },
    _G.CRED_REV_RECEIVED: {
        _send(M.CRED_REV_RES, Outcome.FULL): _G.CAPTURED,  # no credit left
        _send(M.CRED_REV_RES, Outcome.PARTIAL): _G.CREDITED,
        _send(M.CRED_REV_RES, _D): _G.CREDITED,
        _send(M.ERROR): _G.CREDITED,
    },
    _G.DECLINED: {},
    _G.REVERSED: {},
    _G.ERROR: {},
}


# --- gateway: one batch -----------------------------------------------------------------


class GatewayBatch(StrEnum):
    NONE = "none"
    OPEN = "open"
    CLOSED = "closed"
    SETTLED = "settled"


_B = GatewayBatch
_ITEMS = (M.CAP_REQ, M.CAP_REV_REQ, M.CRED_REQ, M.CRED_REV_REQ)
_QUERY = _recv(M.BATCH_ADMIN_REQ, Outcome.QUERY)
GATEWAY_BATCH: Table = {
    _B.NONE: {
        _recv(M.BATCH_ADMIN_REQ, Outcome.OPEN): _B.OPEN,
        _recv(M.CAP_REQ): _B.OPEN,  # the first capture opens a batch implicitly
        _recv(M.CRED_REQ): _B.OPEN,
    },
    _B.OPEN: {
        **{_recv(t): _B.OPEN for t in _ITEMS},  # items (and reversals) only while open
        _recv(M.BATCH_ADMIN_REQ, Outcome.PURGE): _B.OPEN,
        _recv(M.BATCH_ADMIN_REQ, Outcome.CLOSE): _B.CLOSED,
        _QUERY: _B.OPEN,
    },
    _B.CLOSED: {_QUERY: _B.CLOSED, _local(Outcome.SETTLED): _B.SETTLED},
    _B.SETTLED: {_QUERY: _B.SETTLED},
}


# --- CA: one registration ---------------------------------------------------------------


class CARegistration(StrEnum):
    IDLE = "idle"
    CINIT_RECEIVED = "cinit_received"
    CINIT_SENT = "cinit_sent"
    ME_AQ_CINIT_RECEIVED = "me_aq_cinit_received"
    REGFORM_RECEIVED = "regform_received"
    REGFORM_SENT = "regform_sent"
    CERTREQ_RECEIVED = "certreq_received"
    PENDING = "pending"
    INQ_RECEIVED = "inq_received"
    ISSUED = "issued"
    REJECTED = "rejected"
    ERROR = "error"


_R = CARegistration
_I, _P, _X = Outcome.ISSUED, Outcome.PENDING, Outcome.REJECTED
CA_REGISTRATION: Table = {
    _R.IDLE: {
        _recv(M.CARD_CINIT_REQ): _R.CINIT_RECEIVED,
        _recv(M.ME_AQ_CINIT_REQ): _R.ME_AQ_CINIT_RECEIVED,
        _recv(M.CERT_REQ): _R.CERTREQ_RECEIVED,  # renewal: the form is already known
    },
    _R.CINIT_RECEIVED: {_send(M.CARD_CINIT_RES): _R.CINIT_SENT, _send(M.ERROR): _R.ERROR},
    _R.CINIT_SENT: {_recv(M.REG_FORM_REQ): _R.REGFORM_RECEIVED},
    _R.REGFORM_RECEIVED: {_send(M.REG_FORM_RES): _R.REGFORM_SENT, _send(M.ERROR): _R.ERROR},
    _R.ME_AQ_CINIT_RECEIVED: {
        _send(M.ME_AQ_CINIT_RES): _R.REGFORM_SENT,  # the form rides in Me-AqCInitRes
        _send(M.ERROR): _R.ERROR,
    },
    _R.REGFORM_SENT: {_recv(M.CERT_REQ): _R.CERTREQ_RECEIVED},
    _R.CERTREQ_RECEIVED: {
        _send(M.CERT_RES, _I): _R.ISSUED,
        _send(M.CERT_RES, _P): _R.PENDING,
        _send(M.CERT_RES, _X): _R.REJECTED,
        _send(M.ERROR): _R.ERROR,
    },
    _R.PENDING: {_recv(M.CERT_INQ_REQ): _R.INQ_RECEIVED},
    _R.INQ_RECEIVED: {
        _send(M.CERT_INQ_RES, _I): _R.ISSUED,
        _send(M.CERT_INQ_RES, _P): _R.PENDING,
        _send(M.CERT_INQ_RES, _X): _R.REJECTED,
        _send(M.ERROR): _R.PENDING,
    },
    _R.ISSUED: {},
    _R.REJECTED: {},
    _R.ERROR: {},
}


TABLES: dict[MachineKind, tuple[Table, str]] = {
    MachineKind.CARDHOLDER_PURCHASE: (CARDHOLDER_PURCHASE, _C.IDLE),
    MachineKind.MERCHANT_ORDER: (MERCHANT_ORDER, _O.IDLE),
    MachineKind.MERCHANT_PAYMENT: (MERCHANT_PAYMENT, _MP.AUTHORIZED),
    MachineKind.GATEWAY_TRANSACTION: (GATEWAY_TRANSACTION, _G.NEW),
    MachineKind.GATEWAY_BATCH: (GATEWAY_BATCH, _B.NONE),
    MachineKind.CA_REGISTRATION: (CA_REGISTRATION, _R.IDLE),
}


@dataclass(frozen=True, slots=True)
class MachineState:
    """The persistable value of a machine: which table, and the state in it."""

    kind: MachineKind
    state: Annotated[str, MaxLen(32)]


codec.validate_schema(MachineState)


class Machine:
    """One party's view of one exchange; ``send``/``receive`` move it along its table."""

    __slots__ = ("_kind", "_state", "_table")

    def __init__(self, kind: MachineKind, state: str | None = None) -> None:
        self._kind = kind
        self._table, initial = TABLES[kind]
        if state is None:
            state = initial
        if state not in self._table:
            raise ProtocolError(ErrorCode.DECODING_FAILURE, f"{kind}: unknown state {state!r}")
        self._state = state

    @property
    def kind(self) -> MachineKind:
        return self._kind

    @property
    def state(self) -> str:
        return self._state

    def allowed(self) -> frozenset[Event]:
        """The events legal in the current state."""
        return frozenset(self._table[self._state])

    def can(self, event: Event) -> bool:
        return event in self._table[self._state]

    def fire(self, event: Event) -> str:
        """Apply ``event``; return the new state, or raise ``stateViolation`` (no change)."""
        try:
            new_state = self._table[self._state][event]
        except KeyError:
            what = event.msg_type.name if event.msg_type is not None else "local event"
            outcome = f" ({event.outcome.name})" if event.outcome is not None else ""
            raise ProtocolError(
                ErrorCode.STATE_VIOLATION,
                f"{self._kind}: {event.direction.name.lower()} {what}{outcome} "
                f"not allowed in state {self._state}",
            ) from None
        self._state = new_state
        return new_state

    def send(self, msg_type: M, outcome: Outcome | None = None) -> str:
        return self.fire(Event(Direction.SEND, msg_type, outcome))

    def receive(self, msg_type: M, outcome: Outcome | None = None) -> str:
        return self.fire(Event(Direction.RECEIVE, msg_type, outcome))

    def local(self, outcome: Outcome) -> str:
        return self.fire(Event(Direction.LOCAL, None, outcome))

    def snapshot(self) -> MachineState:
        return MachineState(self._kind, str(self._state))

    @classmethod
    def restore(cls, value: MachineState) -> Machine:
        """Rebuild a machine from its persisted value (unknown state → ``decodingFailure``)."""
        return cls(value.kind, value.state)

    def to_bytes(self) -> bytes:
        return codec.encode(self.snapshot())

    @classmethod
    def from_bytes(cls, data: bytes) -> Machine:
        return cls.restore(codec.decode(MachineState, data))

    def __repr__(self) -> str:
        return f"Machine({self._kind.value}, {self._state})"


def cardholder_purchase() -> Machine:
    return Machine(MachineKind.CARDHOLDER_PURCHASE)


def merchant_order() -> Machine:
    return Machine(MachineKind.MERCHANT_ORDER)


def gateway_transaction() -> Machine:
    return Machine(MachineKind.GATEWAY_TRANSACTION)


def gateway_batch() -> Machine:
    return Machine(MachineKind.GATEWAY_BATCH)


def ca_registration() -> Machine:
    return Machine(MachineKind.CA_REGISTRATION)
