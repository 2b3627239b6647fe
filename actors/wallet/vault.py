"""Cardholder secrets at rest: passphrase hashes and card data sealed in the token.

Rule 1: a passphrase is kept only as an scrypt hash with a per-cardholder salt; it is compared
in constant time and never stored, logged or returned.
Rule 2: card data (account, expiry, PANSecret, CardSecret) is sealed with AES-256-GCM by the
keystore under the wallet-owned key ``<identity>/vault``; the AAD names the card id, so a
sealed blob moved to another row does not open. The database holds only the sealed bytes.
Rule 3: card data never crosses the bus in clear: the keystore client seals it to the
keystore's transport key for ``seal`` and gets it back from ``open`` under a one-time reply
key (keystore/transport.py, keystore/client.py Rule 5); so a request that waits in
``keystore.rpc`` or is dropped there holds nothing readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from actors.web.passwords import (  # noqa: F401 - the wallet's names for them
    SCRYPT_N,
    hash_passphrase,
    new_passphrase_record,
    passphrase_matches,
)
from keystore import messages as km
from keystore.client import KeystoreClient
from keystore.errors import KeyExists
from protocol import codec, pan
from protocol.codec import Bytes32, MaxLen

VAULT_KEY = "vault"


@dataclass(frozen=True, slots=True)
class CardSecrets:
    """What a card needs to pay, sealed as one record (Rule 2)."""

    account: pan.Account
    expiry: Annotated[str, MaxLen(4)] = field(repr=False)
    pan_secret: Bytes32 = field(repr=False)
    card_secret: Bytes32 = field(repr=False)


codec.validate_schema(CardSecrets)


def _aad(card_id: str) -> bytes:
    return b"setpay/wallet/card\0" + card_id.encode()


class Vault:
    """Seals and opens ``CardSecrets`` with the wallet's token key."""

    def __init__(self, keystore: KeystoreClient) -> None:
        self.keystore = keystore

    async def ensure_key(self) -> None:
        """Create the vault key inside the token once (it never leaves it)."""
        try:
            await self.keystore.create_key(VAULT_KEY, km.KeyKind.AES256, km.KeyUsage.SECRET)
        except KeyExists:
            pass

    async def seal(self, card_id: str, secrets_: CardSecrets) -> bytes:
        label = self.keystore.label(VAULT_KEY)
        return await self.keystore.seal(label, codec.encode(secrets_), _aad(card_id))

    async def open(self, card_id: str, sealed: bytes) -> CardSecrets:
        label = self.keystore.label(VAULT_KEY)
        return codec.decode(CardSecrets, await self.keystore.open(label, sealed, _aad(card_id)))
