"""Who may do what: the caller's role allows operations, ownership allows keys.

Rule 1: the caller is the AMQP ``user_id`` RabbitMQ validated against the connection login,
``[<prefix>]<role>.<instance>``; never a field of the request body.
Rule 2: a caller uses only keys whose label is ``<caller>/<name>``, and only the operations
its role lists in ``ROLE_OPERATIONS``. Anything else is ``Forbidden`` with a clear reason.
Rule 3: zone keys. The zone PIN key (ZPK) must be one key for two parties: the gateway
enciphers PIN blocks under it (``open_pi_account``) and the issuer host deciphers them
(``pin_pvv``/``pin_verify``). Giving it to either side as owner would let that side use it
through every operation of its role; so it is owned by a ``zone.<name>`` identity that is no
broker login (nobody can call as it, hence nobody can SEAL/OPEN/CREATE with it), is made by
a key ceremony (``setpay keystore create-key --label zone.<name>/zpk``), and is usable only
through ``ZONE_OPERATIONS`` (none returns a clear PIN or a raw cipher) by the identities
``zone_grants`` lists for that zone (patterns such as ``gateway.*``). A vendor HSM
deployment would instead hold one copy per side from a ceremony; the grant list is the same
decision written down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from keystore.errors import Forbidden
from keystore.messages import Op, owner_of

# Reading one's own public keys and listing one's own keys are harmless for every role.
_READ = frozenset({Op.PUBLIC_KEY, Op.LIST})
ROLE_OPERATIONS: dict[str, frozenset[Op]] = {
    # PIN_ENCIPHER is PIN issuance (seeding the test environment): with it and PIN_VERIFY an
    # issuer could test guesses against its own PVVs, which it can do anyway with its PVK;
    # a production deployment grants it to a separate issuance identity instead.
    "issuer": _READ | {Op.HMAC, Op.PIN_PVV, Op.PIN_VERIFY, Op.PIN_ENCIPHER},
    "wallet": _READ | {Op.CREATE, Op.SIGN, Op.SEAL, Op.OPEN},
    "ca": _READ | {Op.CREATE, Op.SIGN, Op.DECRYPT, Op.DERIVE},
    "gateway": _READ | {Op.CREATE, Op.SIGN, Op.DECRYPT, Op.DERIVE, Op.HMAC, Op.OPEN_PI_ACCOUNT},
    "merchant": _READ | {Op.CREATE, Op.SIGN, Op.DECRYPT, Op.DERIVE},
}
ZONE_ROLE = "zone"
ZONE_OPERATIONS = frozenset({Op.OPEN_PI_ACCOUNT, Op.PIN_PVV, Op.PIN_VERIFY, Op.PIN_ENCIPHER})
DEFAULT_ZONE_GRANTS: Mapping[str, frozenset[str]] = {
    "zone.main": frozenset({"gateway.*", "issuer.*"}),
}


@dataclass(frozen=True, slots=True)
class Policy:
    """``identity_prefix`` is stripped from broker user names (test vhosts prefix them)."""

    identity_prefix: str = ""
    roles: dict[str, frozenset[Op]] | None = None
    zone_grants: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: dict(DEFAULT_ZONE_GRANTS)
    )

    def _unprefixed(self, name: str) -> str | None:
        if not self.identity_prefix:
            return name
        if not name.startswith(self.identity_prefix):
            return None
        return name[len(self.identity_prefix) :]

    def role_of(self, caller: str | None) -> str:
        """The role named by a broker identity; ``Forbidden`` if unknown or malformed."""
        if not caller:
            raise Forbidden("request carries no validated user_id")
        name = self._unprefixed(caller)
        if name is None:
            raise Forbidden(f"identity {caller!r} is not of this deployment")
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

    def check_zone_key(self, caller: str | None, op: Op, label: str) -> None:
        """Allow ``caller`` to use zone key ``label`` in ``op`` (Rule 3) or raise ``Forbidden``."""
        self.role_of(caller)
        owner = self._unprefixed(owner_of(label))
        if owner is None or owner.partition(".")[0] != ZONE_ROLE:
            raise Forbidden(f"key {label} is not a zone key of this deployment")
        if op not in ZONE_OPERATIONS:
            raise Forbidden(f"zone keys may not serve {op.name.lower()}")
        name = self._unprefixed(str(caller))
        granted = self.zone_grants.get(owner, frozenset())
        if name is None or not any(fnmatchcase(name, pattern) for pattern in granted):
            raise Forbidden(f"{caller!r} has no grant for zone {owner}")
