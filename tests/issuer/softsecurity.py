"""``IssuerSecurity`` with software keys: tests only (the product's keys live in the HSM).

Rule 1: the same construction as the keystore op contract in ``actors.issuer.security``:
format-4 PIN block under the ZPK, PVV = truncated HMAC-SHA256(PVK, pvv_input).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from actors.issuer.errors import InvalidPinBlock
from actors.issuer.security import PVV_BYTES, pan_index_input, pvv_input
from protocol.errors import ProtocolError
from protocol.pin import decipher_format4, encipher_format4


class SoftIssuerSecurity:
    """Keys in process memory; ``pin_block`` plays the cardholder side (PIN -> ZPK block)."""

    def __init__(self) -> None:
        self.index_key = os.urandom(32)
        self.pvk = os.urandom(32)
        self.zpk = os.urandom(16)
        self.calls = 0

    async def pan_index(self, pan: str) -> bytes:
        self.calls += 1
        return hmac.new(self.index_key, pan_index_input(pan), hashlib.sha256).digest()

    async def pvv(self, account: str, pin_block_under_zpk: bytes) -> bytes:
        try:
            pin = decipher_format4(self.zpk, pin_block_under_zpk, account)
        except ProtocolError:
            raise InvalidPinBlock("PIN block does not open") from None
        return hmac.new(self.pvk, pvv_input(account, pin), hashlib.sha256).digest()[:PVV_BYTES]

    async def verify_pin(self, account: str, pin_block_under_zpk: bytes, pvv: bytes) -> bool:
        try:
            candidate = await self.pvv(account, pin_block_under_zpk)
        except InvalidPinBlock:
            return False
        return hmac.compare_digest(candidate, pvv)

    async def pin_block(self, account: str, pin: str) -> bytes:
        return encipher_format4(self.zpk, pin, account)
