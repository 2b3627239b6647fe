"""The issuer's PIN/PAN security interface (PAN index, PVV) and its keystore binding.

Rule 1: clear PANs enter only ``pan_index``; clear PINs never enter this process: PINs
arrive as ISO 9564 format-4 blocks under the network's zone PIN key
(``actors.iso8583.security.ZPK_LABEL``) and are opened only inside the security module,
which returns a PVV or a yes/no.
Rule 2: PVV = HMAC-SHA256(PVK, "setpay/pvv/v1" ‖ len(account) ‖ account ‖ PIN) truncated to
``PVV_BYTES``; the PAN index = HMAC-SHA256(PAN-index key, "setpay/pan-index/v1" ‖ account).
Both keys live in the HSM; the DB holds only their outputs; both are the issuer's alone.
Rule 3: the PAN (the PAN-index HMAC's input) and an issued PIN cross the bus only sealed to
the keystore's transport key (keystore/client.py Rule 5: ``hmac`` and ``pin_issue`` seal
what they carry); the keystore opens them inside its process and answers the index or PVV.
"""

from __future__ import annotations

from typing import Final, Protocol

from actors.issuer.errors import InvalidPinBlock, SecurityUnavailable
from protocol import pin as pin_blocks

PVV_BYTES: Final = pin_blocks.PVV_BYTES
PAN_INDEX_LABEL: Final = b"setpay/pan-index/v1\x00"
PVV_LABEL: Final = pin_blocks.PVV_LABEL
PAN_INDEX_KEY: Final = "issuer-pan-index"  # keystore key names (labels are <user>/<name>)
PVK_KEY: Final = "issuer-pvk"


class IssuerSecurity(Protocol):
    """What the host asks of its security module. Implementations raise
    ``SecurityUnavailable`` when they cannot answer (never a wrong answer)."""

    async def pan_index(self, pan: str) -> bytes:
        """The keyed index of an account reference (32 bytes)."""
        ...

    async def pvv(self, account: str, pin_block_under_zpk: bytes) -> bytes:
        """The PVV of the PIN in ``pin_block_under_zpk`` bound to ``account``.

        Raises ``InvalidPinBlock`` if the block does not open for ``account``."""
        ...

    async def verify_pin(self, account: str, pin_block_under_zpk: bytes, pvv: bytes) -> bool:
        """True iff the block opens under the ZPK for ``account`` and its PIN's PVV is ``pvv``."""
        ...


def pan_index_input(account: str) -> bytes:
    """The bytes the PAN-index HMAC runs over (domain-separated)."""
    return PAN_INDEX_LABEL + account.encode("ascii")


def pvv_input(account: str, pin: str) -> bytes:
    """The bytes the PVV HMAC runs over; only a security module ever builds this."""
    return pin_blocks.pvv_input(account, pin)


class SecurityClient(Protocol):
    """The slice of ``keystore.client.KeystoreClient`` the issuer's security module needs."""

    async def hmac(self, label: str, data: bytes) -> bytes: ...

    async def pin_pvv(
        self, pvk_label: str, zpk_label: str, account: str, block: bytes
    ) -> bytes: ...

    async def pin_verify(
        self, pvk_label: str, zpk_label: str, account: str, block: bytes, pvv: bytes
    ) -> bool: ...


class KeystoreIssuerSecurity:
    """``IssuerSecurity`` over the keystore actor (``keystore.client.KeystoreClient``): the
    PAN index by its ``hmac`` op, PVV and PIN checks by ``pin_pvv``/``pin_verify`` with the
    zone PIN key ``zpk_label`` (``zone.<name>/zpk``; without one, PIN ops are unavailable)."""

    def __init__(
        self,
        client: SecurityClient,
        *,
        pan_index_label: str,
        pvk_label: str,
        zpk_label: str | None = None,
    ) -> None:
        self.client = client
        self.pan_index_label = pan_index_label
        self.pvk_label = pvk_label
        self.zpk_label = zpk_label

    async def pan_index(self, pan: str) -> bytes:
        try:
            return bytes(await self.client.hmac(self.pan_index_label, pan_index_input(pan)))
        except Exception as exc:  # any keystore failure: unavailable, never a guess
            raise SecurityUnavailable(f"pan index failed: {type(exc).__name__}") from None

    def _zpk(self) -> str:
        if self.zpk_label is None:
            raise SecurityUnavailable("no zone PIN key configured")
        return self.zpk_label

    async def pvv(self, account: str, pin_block_under_zpk: bytes) -> bytes:
        from keystore.errors import InvalidPinBlock as KeystoreInvalidPinBlock

        zpk = self._zpk()
        try:
            return bytes(
                await self.client.pin_pvv(self.pvk_label, zpk, account, pin_block_under_zpk)
            )
        except KeystoreInvalidPinBlock:
            raise InvalidPinBlock("PIN block does not open") from None
        except Exception as exc:  # any other keystore failure: unavailable, never a guess
            raise SecurityUnavailable(f"pin_pvv failed: {type(exc).__name__}") from None

    async def verify_pin(self, account: str, pin_block_under_zpk: bytes, pvv: bytes) -> bool:
        from keystore.errors import PinBlockMissing, PinLocked

        zpk = self._zpk()
        try:
            return bool(
                await self.client.pin_verify(self.pvk_label, zpk, account, pin_block_under_zpk, pvv)
            )
        except PinLocked:  # the keystore's lockout refuses every PIN, the right one included
            return False
        except PinBlockMissing:  # a format error, never a wrong PIN
            raise InvalidPinBlock("no PIN block") from None
        except Exception as exc:  # any other keystore failure: unavailable, never a guess
            raise SecurityUnavailable(f"pin_verify failed: {type(exc).__name__}") from None


PIN_OP_CONTRACT: Final = """
Implemented in keystore/pinops.py (client methods on keystore.client.KeystoreClient):
pin_pvv(pvk_label, zpk_label, account, pin_block[16]) -> bytes[8]
  format 4 block deciphered under the ZPK in the token (CKM_AES_ECB); a block that does not
  decode for `account` -> Fault INVALID_PIN_BLOCK; PVV = CKM_SHA256_HMAC(PVK,
  protocol.pin.pvv_input(account, PIN))[:8]. Audited by op and labels only.
pin_verify(pvk_label, zpk_label, account, pin_block, pvv) -> bool  (constant-time compare;
  a block that does not open -> False; an empty block -> Fault PIN_BLOCK_MISSING, not counted;
  3 failures lock the account's PIN for a day -> Fault PIN_LOCKED)
pin_issue(pvk_label, account, pin) -> PVV (issuance / seeding; identities with the issuance
  grant; no PIN block comes back; account and PIN travel sealed to the transport key). All PIN ops are counted per caller and per account
  (keystore/pinguard.py); the PVK and ZPK serve no other operation (Fault PIN_KEY_MISUSE).
Roles: issuer gets all three; the PVK and PAN-index key are issuer.<id>/issuer-pvk and
  issuer.<id>/issuer-pan-index (hmac-sha256, made by a key ceremony). The ZPK is the zone key
  zone.main/zpk (aes256; actors.iso8583.security.ZPK_LABEL), usable by the identities
  keystore.policy.DEFAULT_ZONE_GRANTS lists (gateway.*, issuer.*) through PIN operations only;
  the gateway uses it in open_pi_account.
"""
