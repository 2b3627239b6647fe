"""State machines: every (state, event) pair either moves as its table says or raises
stateViolation without moving; the happy paths of each role; persistence of states."""

from __future__ import annotations

import itertools

import pytest

from protocol import states as s
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import MessageType as M
from protocol.states import Direction, Event, MachineKind, Outcome

ALL_EVENTS = [
    Event(d, t, o)
    for d, t, o in itertools.product((Direction.SEND, Direction.RECEIVE), list(M), [None, *Outcome])
] + [Event(Direction.LOCAL, None, o) for o in Outcome]


@pytest.mark.parametrize("kind", list(MachineKind))
def test_every_state_event_pair_follows_the_table(kind: MachineKind) -> None:
    """Exhaustive over every state and every (direction, message type, outcome) and local events."""
    table, _ = s.TABLES[kind]
    moved = refused = 0
    for state in table:
        for event in ALL_EVENTS:
            machine = s.Machine(kind, state)
            expected = table[state].get(event)
            if expected is None:
                with pytest.raises(ProtocolError) as info:
                    machine.fire(event)
                assert info.value.code is ErrorCode.STATE_VIOLATION
                assert machine.state == state
                refused += 1
            else:
                assert machine.fire(event) == expected
                assert machine.state == expected
                moved += 1
    assert moved == sum(len(row) for row in table.values())
    assert refused == len(table) * len(ALL_EVENTS) - moved


@pytest.mark.parametrize("kind", list(MachineKind))
def test_tables_are_closed_and_every_state_is_reachable(kind: MachineKind) -> None:
    """Targets are states of the same table; a walk from the initial state reaches them all."""
    table, initial = s.TABLES[kind]
    for row in table.values():
        assert set(row.values()) <= set(table)
    seen, todo = {initial}, [initial]
    while todo:
        for target in table[todo.pop()].values():
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(table)


@pytest.mark.parametrize("kind", list(MachineKind))
def test_an_error_is_never_answered_with_an_error(kind: MachineKind) -> None:
    table, _ = s.TABLES[kind]
    for row in table.values():
        for event, target in row.items():
            if event == Event(Direction.RECEIVE, M.ERROR):
                assert Event(Direction.SEND, M.ERROR) not in table[target]


def test_cardholder_purchase_path_and_refusals() -> None:
    m = s.cardholder_purchase()
    with pytest.raises(ProtocolError):
        m.receive(M.PRES)  # no PRes before a PReq
    m.send(M.PINIT_REQ)
    with pytest.raises(ProtocolError):
        m.send(M.PREQ)  # the PInitRes (XID, Chall-M) must come first
    m.receive(M.PINIT_RES)
    m.send(M.PREQ)
    m.send(M.INQ_REQ)
    assert m.receive(M.PRES) == s.CardholderPurchase.DONE
    m.send(M.INQ_REQ)
    assert m.receive(M.INQ_RES) == s.CardholderPurchase.DONE
    with pytest.raises(ProtocolError):
        m.receive(M.PRES)  # a second PRes for one purchase is a replay


def test_merchant_order_path() -> None:
    m = s.merchant_order()
    for direction, t in [
        ("r", M.PINIT_REQ),
        ("s", M.PINIT_RES),
        ("r", M.PREQ),
        ("s", M.AUTH_REQ),
        ("r", M.AUTH_RES),
        ("s", M.PRES),
        ("r", M.INQ_REQ),
        ("s", M.INQ_RES),
    ]:
        (m.receive if direction == "r" else m.send)(t)
    assert m.state == s.MerchantOrder.DONE
    with pytest.raises(ProtocolError):
        m.send(M.AUTH_REQ)  # an order is authorized once


def test_gateway_transaction_auth_capture_credit_reversal() -> None:
    g = s.gateway_transaction()
    g.receive(M.AUTH_REQ)
    with pytest.raises(ProtocolError):
        g.send(M.AUTH_RES)  # the outcome decides the next state; it must be given
    g.send(M.AUTH_RES, Outcome.APPROVED)
    g.receive(M.CAP_REQ)
    g.send(M.CAP_RES, Outcome.APPROVED)
    assert g.state == s.GatewayTransaction.CAPTURED
    with pytest.raises(ProtocolError):
        g.receive(M.AUTH_REV_REQ)  # a captured authorization cannot be reversed
    g.receive(M.CRED_REQ)
    g.send(M.CRED_RES, Outcome.APPROVED)
    g.receive(M.CRED_REV_REQ)
    assert g.send(M.CRED_REV_RES, Outcome.FULL) == s.GatewayTransaction.CAPTURED


def test_gateway_sale_and_full_reversal() -> None:
    sale = s.gateway_transaction()
    sale.receive(M.AUTH_REQ)
    assert sale.send(M.AUTH_RES, Outcome.SALE) == s.GatewayTransaction.CAPTURED
    auth = s.gateway_transaction()
    auth.receive(M.AUTH_REQ)
    auth.send(M.AUTH_RES, Outcome.APPROVED)
    auth.receive(M.AUTH_REV_REQ)
    assert auth.send(M.AUTH_REV_RES, Outcome.FULL) == s.GatewayTransaction.REVERSED
    with pytest.raises(ProtocolError):
        auth.receive(M.CAP_REQ)


def test_gateway_batch_open_close_settle() -> None:
    b = s.gateway_batch()
    b.receive(M.BATCH_ADMIN_REQ, Outcome.OPEN)
    b.receive(M.CAP_REQ)
    b.receive(M.CAP_REV_REQ)
    b.receive(M.BATCH_ADMIN_REQ, Outcome.CLOSE)
    with pytest.raises(ProtocolError):
        b.receive(M.CAP_REV_REQ)  # items in a closed batch are not reversible
    assert b.local(Outcome.SETTLED) == s.GatewayBatch.SETTLED
    b.receive(M.BATCH_ADMIN_REQ, Outcome.QUERY)
    with pytest.raises(ProtocolError):
        b.receive(M.BATCH_ADMIN_REQ, Outcome.PURGE)


def test_ca_registration_pending_then_issued() -> None:
    ca = s.ca_registration()
    ca.receive(M.CARD_CINIT_REQ)
    ca.send(M.CARD_CINIT_RES)
    ca.receive(M.REG_FORM_REQ)
    ca.send(M.REG_FORM_RES)
    ca.receive(M.CERT_REQ)
    ca.send(M.CERT_RES, Outcome.PENDING)
    ca.receive(M.CERT_INQ_REQ)
    ca.send(M.CERT_INQ_RES, Outcome.PENDING)
    ca.receive(M.CERT_INQ_REQ)
    assert ca.send(M.CERT_INQ_RES, Outcome.ISSUED) == s.CARegistration.ISSUED
    with pytest.raises(ProtocolError):
        ca.receive(M.CERT_REQ)


def test_state_violation_names_the_event_not_data() -> None:
    m = s.merchant_order()
    with pytest.raises(ProtocolError) as info:
        m.send(M.PRES)
    assert "send PRES" in info.value.detail and "idle" in info.value.detail
    assert s.Event(Direction.SEND, M.PRES) not in m.allowed()
    assert m.can(s.Event(Direction.RECEIVE, M.PINIT_REQ))


@pytest.mark.parametrize("kind", list(MachineKind))
def test_every_state_persists_and_restores(kind: MachineKind) -> None:
    table, _ = s.TABLES[kind]
    for state in table:
        machine = s.Machine(kind, state)
        data = machine.to_bytes()
        again = s.Machine.from_bytes(data)
        assert (again.kind, again.state) == (kind, state)
        assert again.allowed() == machine.allowed()
        assert s.Machine.restore(machine.snapshot()).state == state


def test_corrupt_snapshots_are_refused() -> None:
    bad = s.MachineState(MachineKind.GATEWAY_BATCH, "captured")
    with pytest.raises(ProtocolError) as info:
        s.Machine.restore(bad)
    assert info.value.code is ErrorCode.DECODING_FAILURE
    for data in (b"\x92\xa4nope\xa4idle", b"\x91\xa4idle", b""):
        with pytest.raises(ProtocolError) as info:
            s.Machine.from_bytes(data)
        assert info.value.code is ErrorCode.DECODING_FAILURE
