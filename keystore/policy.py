"""Who may do what: the caller's role allows operations, ownership allows keys.

Rule 1: the caller is the AMQP ``user_id`` RabbitMQ validated against the connection login,
``[<prefix>]<role>.<instance>``; never a field of the request body.
Rule 2: a caller uses only keys whose label is ``<caller>/<name>``, and only the operations
its role lists in ``ROLE_OPERATIONS``. Anything else is ``Forbidden`` with a clear reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from keystore.errors import Forbidden
from keystore.messages import Op, owner_of

# Reading one's own public keys and listing one's own keys are harmless for every role.
_READ = frozenset({Op.PUBLIC_KEY, Op.LIST})
ROLE_OPERATIONS: dict[str, frozenset[Op]] = {
    "issuer": _READ | {Op.HMAC},
    "wallet": _READ | {Op.CREATE, Op.SIGN, Op.SEAL, Op.OPEN},
    "ca": _READ | {Op.CREATE, Op.SIGN, Op.DECRYPT, Op.DERIVE},
    "gateway": _READ | {Op.CREATE, Op.SIGN, Op.DECRYPT, Op.DERIVE, Op.HMAC},
    "merchant": _READ | {Op.CREATE, Op.SIGN, Op.DECRYPT, Op.DERIVE},
}


@dataclass(frozen=True, slots=True)
class Policy:
    """``identity_prefix`` is stripped from broker user names (test vhosts prefix them)."""

    identity_prefix: str = ""
    roles: dict[str, frozenset[Op]] | None = None

    def role_of(self, caller: str | None) -> str:
        """The role named by a broker identity; ``Forbidden`` if unknown or malformed."""
        if not caller:
            raise Forbidden("request carries no validated user_id")
        name = caller
        if self.identity_prefix:
            if not name.startswith(self.identity_prefix):
                raise Forbidden(f"identity {caller!r} is not of this deployment")
            name = name[len(self.identity_prefix) :]
        role, dot, instance = name.partition(".")
        table = self.roles if self.roles is not None else ROLE_OPERATIONS
        if not dot or not instance or role not in table:
            raise Forbidden(f"identity {caller!r} has no keystore role")
        return role

    def check(self, caller: str | None, op: Op, label: str | None) -> None:
        """Allow ``op`` on ``label`` for ``caller`` or raise ``Forbidden``/``BadRequest``."""
        role = self.role_of(caller)
        table = self.roles if self.roles is not None else ROLE_OPERATIONS
        if op not in table[role]:
            raise Forbidden(f"role {role!r} may not {op.name.lower()}")
        if label is not None and owner_of(label) != caller:
            raise Forbidden(f"{caller!r} does not own key {label}")
