"""Who may do what: the operation object names the roles, ownership and key class the keys.

Rule 1: the caller is the AMQP ``user_id`` RabbitMQ validated against the connection login,
``[<prefix>]<role>.<instance>``; never a field of the request body.
Rule 2: a caller uses only keys whose label is ``<caller>/<name>``, and only the operations
whose object (keystore/operations.py) lists its role. Anything else is ``Forbidden`` with a
clear reason.
Rule 3: zone keys. The zone PIN key (ZPK) must be one key for two parties: the gateway
enciphers PIN blocks under it (``open_pi_account``) and the issuer host deciphers them
(``pin_pvv``/``pin_verify``). Giving it to either side as owner would let that side use it
through every operation of its role; so it is owned by a ``zone.<name>`` identity that is no
broker login (nobody can call as it, hence nobody can SEAL/OPEN/CREATE with it), is made by
a key ceremony (``setpay keystore create-key --label zone.<name>/zpk``), and is usable only
as the ``zpk_label`` of a PIN operation (none returns a clear PIN or a raw cipher) by the
identities ``zone_grants`` lists for that zone (patterns such as ``gateway.*``). A vendor HSM
deployment would instead hold one copy per side from a key ceremony; the grant list is the
same decision written down.
Rule 4: PIN keys do one job. A key's PIN class comes from its label in the token: every key
of a ``zone.*`` owner is a ZPK; a key whose name has the word ``pvk`` (``issuer-pvk``,
``pvk``, ``pvk-2``) is a PIN verification key (PVK). An operation names the class its own
key (``label``) must have: the PIN operations a PVK, every other operation none. Any other
use, for every identity and before any role check, is ``PinKeyMisuse`` (so a PVV, which is
an HMAC under the PVK, is never computed by the generic ``hmac``). ``public_key`` reads
metadata only and takes any key.
Rule 5: PIN issuance (``pin_issue``, PIN -> PVV) is further limited to the identities
``issuance_grants`` lists: the test environment's issuer seeds its own accounts; a
production deployment lists only its PIN issuance (ceremony) identity.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from keystore.errors import Forbidden, PinKeyMisuse
from keystore.messages import owner_of
from keystore.operations import ROLES, Operation, PinKey

ZONE_ROLE = "zone"
DEFAULT_ZONE_GRANTS: Mapping[str, frozenset[str]] = {
    "zone.main": frozenset({"gateway.*", "issuer.*"}),
}
DEFAULT_ISSUANCE_GRANTS: frozenset[str] = frozenset({"issuer.*"})
_PVK_NAME = re.compile(r"(?:^|[-_.])pvk(?:$|[-_.])")


@dataclass(frozen=True, slots=True)
class Policy:
    """``identity_prefix`` is stripped from broker user names (test vhosts prefix them)."""

    identity_prefix: str = ""
    zone_grants: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: dict(DEFAULT_ZONE_GRANTS)
    )
    issuance_grants: frozenset[str] = DEFAULT_ISSUANCE_GRANTS

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
        if not dot or not instance or role not in ROLES:
            raise Forbidden(f"identity {caller!r} has no keystore role")
        return role

    def pin_class(self, label: str) -> PinKey | None:
        """The PIN class of key ``label`` (Rule 4), or None for an ordinary key."""
        owner = self._unprefixed(owner_of(label))
        if owner is not None and owner.partition(".")[0] == ZONE_ROLE:
            return PinKey.ZPK
        return PinKey.PVK if _PVK_NAME.search(label.partition("/")[2]) else None

    def authorize(self, caller: str | None, operation: Operation, record: Any) -> None:
        """Rules 1-5 for ``record`` of ``operation``; raises ``Forbidden``/``PinKeyMisuse``."""
        role = self.role_of(caller)
        label: str | None = getattr(record, "label", None)
        if label is not None and operation.key_class is not PinKey.ANY:
            have = self.pin_class(label)
            if have is not operation.key_class:
                if have is not None:
                    raise PinKeyMisuse(f"key {label} is a {have}: it serves only PIN operations")
                raise PinKeyMisuse(f"{operation.name} needs a {operation.key_class}")
        if role not in operation.roles:
            raise Forbidden(f"role {role!r} may not {operation.name}")
        if operation.issuance and not self._granted(caller, self.issuance_grants):
            raise Forbidden(f"{caller!r} has no PIN issuance grant")
        if label is not None and owner_of(label) != caller:
            raise Forbidden(f"{caller!r} does not own key {label}")
        zpk: str | None = getattr(record, "zpk_label", None)
        if zpk is not None:
            self.check_zone_key(caller, zpk)

    def check_zone_key(self, caller: str | None, label: str) -> None:
        """Allow ``caller`` to use zone key ``label`` as a ZPK (Rule 3) or raise ``Forbidden``."""
        self.role_of(caller)
        owner = self._unprefixed(owner_of(label))
        if owner is None or owner.partition(".")[0] != ZONE_ROLE:
            raise Forbidden(f"key {label} is not a zone key of this deployment")
        if not self._granted(caller, self.zone_grants.get(owner, frozenset())):
            raise Forbidden(f"{caller!r} has no grant for zone {owner}")

    def _granted(self, caller: str | None, patterns: frozenset[str]) -> bool:
        name = self._unprefixed(str(caller))
        return name is not None and any(fnmatchcase(name, p) for p in patterns)
