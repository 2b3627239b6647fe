"""The network's security conventions both ends share: the zone PIN key and masked accounts.

Rule 1: a PIN crosses the network only as an ISO 9564 format-4 block (``protocol.pin``)
under the zone PIN key (ZPK) ``ZPK_LABEL``: the acquirer (gateway) translates a PIN into it,
the issuer opens it; both only inside the keystore, never in this process.
Rule 2: ``mask_account`` is the one way an account appears in logs or display: last 4 only.
"""

from __future__ import annotations

from typing import Final

# The zone key of zone ``main`` (keystore/policy.py Rule 3), made by a key ceremony; a
# deployment prefixes it with its broker user prefix.
ZPK_LABEL: Final = "zone.main/zpk"


def mask_account(account: str) -> str:
    """``…1234``: the last four digits, for display and logs."""
    digits = "".join(ch for ch in account if ch.isdigit())
    return f"…{digits[-4:]}" if len(digits) >= 4 else "…"
