"""Who may send which SET request: the role behind the broker login that published it.

Rule 1: every request type a party takes names the roles that may send it; a request from a
login of any other role (or from a login that is no identity of the environment) is refused
with ``unauthorizedSender`` before its handler runs. The broker's topic permissions already
keep other roles off each queue (``deploy/rabbitmq/definitions.toml``); this table is the
party's own check of the same rule, so a broker misconfiguration does not let a party act
as another.
Rule 2: a message type absent from the table is no request (a response, an Error): the
entrypoint does not take it as one.
"""

from __future__ import annotations

from typing import Final

from protocol.messages import MessageType as M

_WALLET: Final = frozenset({"wallet"})
_MERCHANT: Final = frozenset({"merchant"})
_ENROLLING: Final = frozenset({"wallet", "merchant", "gateway"})

REQUESTERS: Final[dict[M, frozenset[str]]] = {
    # purchase: cardholder -> merchant
    M.PINIT_REQ: _WALLET,
    M.PREQ: _WALLET,
    M.INQ_REQ: _WALLET,
    # payment: merchant -> gateway
    M.AUTH_REQ: _MERCHANT,
    M.AUTH_REV_REQ: _MERCHANT,
    M.CAP_REQ: _MERCHANT,
    M.CAP_REV_REQ: _MERCHANT,
    M.CRED_REQ: _MERCHANT,
    M.CRED_REV_REQ: _MERCHANT,
    M.PCERT_REQ: _MERCHANT,
    M.BATCH_ADMIN_REQ: _MERCHANT,
    # certificate management: every end entity -> CA
    M.CARD_CINIT_REQ: _WALLET,
    M.ME_AQ_CINIT_REQ: frozenset({"merchant", "gateway"}),
    M.REG_FORM_REQ: _ENROLLING,
    M.CERT_REQ: _ENROLLING,
    M.CERT_INQ_REQ: _ENROLLING,
    # revocation data pushed by the CA to every gateway and merchant (one-way)
    M.BCI_DISTRIBUTION: frozenset({"ca"}),
}


def may_send(msg_type: M, role: str | None) -> bool:
    """Whether a login of ``role`` may send a request of ``msg_type`` (Rule 1)."""
    allowed = REQUESTERS.get(msg_type)
    return allowed is not None and role in allowed
