"""The keystore's operations, one frozen object each (jPOS SMAdapter style).

Rule 1: an ``Operation`` carries everything about one ``Op``: its request and response
records (the wire format), the roles that may call it, the PIN class its own key must have
(keystore/policy.py Rule 4), whether it is PIN issuance, whether it may ride in a batch,
and its implementation ``run(ctx, record)``. ``OPERATIONS`` is the one table; the service,
the policy and the client all read it, and nothing else branches on ``Op``.
Rule 2: ``run`` is called only by ``KeystoreService``'s template (decode -> authorise -> run
-> audit -> answer) on the PKCS#11 thread, after ``Policy.authorize`` passed; a batch runs
each item through that same template (``Context.perform``), as the single op it names.
Rule 3: a payment instruction's wrap opens only through ``open_pi_account``: a plain decrypt
whose plaintext holds a PIN-bearing account part, and a plain derive for a PI envelope's
ECDH-ES context (k_extra would open p), are ``Forbidden`` for every caller.
Rule 4: PIN verification, PVV creation, issuance and translation exist only as their own
operations (keystore/pinops.py), each under the PIN guard (keystore/pinguard.py).
Rule 5: the operations whose record carries a secret (``hmac``, ``seal``, ``pin_issue``) take
it only sealed to the transport key; ``run`` opens it with ``Context.unseal`` after the
policy passed. The operations whose answer holds one (``sealed_reply``: ``open``,
``decrypt``, ``derive``, ``batch``, ``open_pi_account``) answer under the reply key their
record sealed, opened by the service's template before ``run`` (keystore/service.py
Rule 5; keystore/transport.py). There is no clear variant.
Rule 6: an operation that changes state (``changes_state``: a key created, a PI recorded as
used, a PIN guard count or issuance) is never sent twice by the client on its own; every
other operation is safe to repeat, so its call is resent when a broker failover lost it
(broker/rpc.py Rule 5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from keystore import messages as m
from keystore import pinops, transport
from keystore.errors import BadRequest, Fault, Forbidden, KeystoreError
from keystore.hsm import Hsm
from keystore.pinguard import PinGuard
from keystore.register import UsedPiRegister
from protocol import codec, dualsig
from protocol.dualsig import OpenedAccount


class PinKey(StrEnum):
    """The PIN class an operation's own key must have (policy Rule 4)."""

    PVK = "pin verification key"
    ZPK = "zone PIN key"
    ANY = "any key"  # metadata reads only


Perform = Callable[["Operation", "str | None", Callable[[], Any]], Any]


@dataclass(frozen=True, slots=True)
class Context:
    """What an operation runs with: the token, the used-PI register, the PIN guard, the
    validated caller, and the service's template for the items of a batch."""

    hsm: Hsm
    register: UsedPiRegister | None
    guard: PinGuard | None
    caller: str
    perform: Perform
    opener: transport.Opener

    def unseal(self, op: m.Op, record: Any) -> bytes:
        """The secret ``record`` carries sealed for ``op`` by this caller (Rule 5)."""
        return self.opener.open(op, self.caller, record)


@dataclass(frozen=True, slots=True)
class Operation:
    """One keystore operation (Rule 1)."""

    op: m.Op
    request: type
    response: type
    roles: frozenset[str]
    run: Callable[[Context, Any], Any]
    key_class: PinKey | None = None
    issuance: bool = False
    batch_record: Callable[[m.BatchItem], Any] | None = None
    audited: bool = True  # a batch is not: each of its items is
    sealed_reply: bool = False  # its answer holds a secret: sent under the reply key (Rule 5)
    changes_state: bool = False  # a second run is not the first one's answer again (Rule 6)

    @property
    def name(self) -> str:
        return self.op.name.lower()


def _no_pin(plaintext: bytes) -> bytes:
    """Rule 3: a PIN-bearing PI wrap never leaves through a plain decrypt."""
    if dualsig.holds_pin_block(plaintext):
        raise Forbidden("a PIN-bearing payment instruction opens only by open_pi_account")
    return plaintext


def _derive(ctx: Context, r: m.Derive) -> m.Blob:
    if dualsig.is_pi_wrap_info(r.info):
        raise Forbidden("a payment instruction's wrap opens only by open_pi_account")
    return m.Blob(ctx.hsm.derive(r.label, r.peer_public, r.info, r.length))


def _transport_key(ctx: Context, r: m.TransportKeyRequest) -> m.TransportKey:
    return m.TransportKey(ctx.hsm.key_info(transport.TRANSPORT_LABEL), ctx.opener.oaep_hash)


def _decrypt_item(item: m.BatchItem) -> m.Decrypt:
    if item.oaep_hash is None:
        raise BadRequest("batch decrypt needs an OAEP hash")
    return m.Decrypt(item.label, item.data, item.oaep_hash, transport.UNSEALED)


def _batch(ctx: Context, batch: m.Batch) -> m.BatchResult:
    results: list[m.ItemResult] = []
    for item in batch.items:
        operation = OPERATIONS[item.op]

        def record(item: m.BatchItem = item, operation: Operation = operation) -> Any:
            if operation.batch_record is None:
                raise BadRequest("a batch holds only sign and decrypt")
            return operation.batch_record(item)

        try:
            blob: m.Blob = ctx.perform(operation, item.label, record)
            results.append(m.ItemResult(Fault.OK, "", blob.data))
        except KeystoreError as exc:
            results.append(m.ItemResult(exc.fault, exc.text[:200], b""))
    return m.BatchResult(results)


_ISSUER = frozenset({"issuer"})
_GATEWAY = frozenset({"gateway"})
_PRIVATE = frozenset({"wallet", "ca", "gateway", "merchant"})  # own asymmetric keys
_EXCHANGE = frozenset({"ca", "gateway", "merchant"})
ROLES = _ISSUER | _PRIVATE

_ALL = (
    Operation(m.Op.CREATE, m.CreateKey, m.KeyInfo, _PRIVATE,
              lambda c, r: c.hsm.create_key(r.label, r.kind, r.usage), changes_state=True),
    Operation(m.Op.PUBLIC_KEY, m.KeyRef, m.KeyInfo, ROLES,
              lambda c, r: c.hsm.key_info(r.label), key_class=PinKey.ANY),
    Operation(m.Op.SIGN, m.Sign, m.Blob, _PRIVATE,
              lambda c, r: m.Blob(c.hsm.sign(r.label, r.digest)),
              batch_record=lambda i: m.Sign(i.label, i.data)),
    Operation(m.Op.DECRYPT, m.Decrypt, m.Blob, _EXCHANGE,
              lambda c, r: m.Blob(_no_pin(c.hsm.decrypt(r.label, r.ciphertext, r.oaep_hash))),
              batch_record=_decrypt_item, sealed_reply=True),
    Operation(m.Op.DERIVE, m.Derive, m.Blob, _EXCHANGE, _derive, sealed_reply=True),
    Operation(m.Op.HMAC, m.Hmac, m.Blob, _ISSUER | _GATEWAY,
              lambda c, r: m.Blob(c.hsm.hmac(r.label, c.unseal(m.Op.HMAC, r)))),
    Operation(m.Op.SEAL, m.Seal, m.Blob, frozenset({"wallet"}),
              lambda c, r: m.Blob(c.hsm.seal(r.label, c.unseal(m.Op.SEAL, r), r.aad))),
    Operation(m.Op.OPEN, m.Open, m.Blob, frozenset({"wallet"}),
              lambda c, r: m.Blob(c.hsm.open_sealed(r.label, r.sealed, r.aad)),
              sealed_reply=True),
    Operation(m.Op.LIST, m.ListKeys, m.KeyList, ROLES,
              lambda c, r: m.KeyList(c.hsm.list_keys(c.caller))),
    Operation(m.Op.BATCH, m.Batch, m.BatchResult, ROLES, _batch, audited=False,
              sealed_reply=True),
    Operation(m.Op.OPEN_PI_ACCOUNT, m.OpenPiAccount, OpenedAccount, _GATEWAY,
              lambda c, r: pinops.open_pi_account(c.hsm, c.register, c.guard, c.caller, r),
              sealed_reply=True, changes_state=True),
    Operation(m.Op.PIN_PVV, m.PinPvv, m.Blob, _ISSUER,
              lambda c, r: m.Blob(pinops.pin_pvv(c.hsm, c.guard, c.caller, r)),
              key_class=PinKey.PVK, changes_state=True),
    Operation(m.Op.PIN_VERIFY, m.PinVerify, m.Verdict, _ISSUER,
              lambda c, r: m.Verdict(pinops.pin_verify(c.hsm, c.guard, c.caller, r)),
              key_class=PinKey.PVK, changes_state=True),
    Operation(m.Op.PIN_ISSUE, m.PinIssue, m.Blob, _ISSUER,
              lambda c, r: m.Blob(pinops.pin_issue(c.hsm, c.guard, c.caller, r,
                                                   c.unseal(m.Op.PIN_ISSUE, r))),
              key_class=PinKey.PVK, issuance=True, changes_state=True),
    Operation(m.Op.TRANSPORT_KEY, m.TransportKeyRequest, m.TransportKey, ROLES, _transport_key),
)  # fmt: skip
OPERATIONS: dict[m.Op, Operation] = {o.op: o for o in _ALL}
assert set(OPERATIONS) == set(m.Op), "every Op has exactly one operation object"

for _o in _ALL:
    codec.validate_schema(_o.request)
    codec.validate_schema(_o.response)


def changes_state(op: m.Op) -> bool:
    """Whether ``op`` must not be sent again blindly when its reply was lost (Rule 6)."""
    return OPERATIONS[op].changes_state


def decode_request(data: bytes) -> tuple[Operation, Any]:
    """Decode a request envelope and its operation's record; raises ``BadRequest``."""
    request = m.decode(m.Request, data)
    operation = OPERATIONS[request.op]
    return operation, m.decode(operation.request, request.body)
