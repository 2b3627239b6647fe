"""Where the CA's private keys come from: the keystore (HSM), through one small interface.

Rule 1: the CA never holds private key material; ``KeySource`` hands out
``protocol.keys.PrivateKey`` objects whose operations run in the token.
Rule 2: creating a key that already exists (a crash between key and certificate) reuses it,
so ``setpay ca init`` can be re-run after any failure.
"""

from __future__ import annotations

from typing import Protocol

from keystore import messages as km
from keystore.client import KeystoreClient
from keystore.errors import KeyExists
from protocol.keys import KeyType, PrivateKey, Suite


class KeySource(Protocol):
    async def create(self, name: str, exchange: bool) -> PrivateKey:
        """A new key pair ``name`` (signature, or key exchange when ``exchange``)."""
        ...

    async def get(self, label: str) -> PrivateKey:
        """The key pair stored under ``label`` (as returned in ``PrivateKey.key_id``)."""
        ...


def key_kind(suite: Suite) -> km.KeyKind:
    if suite.key_type is KeyType.EC:
        return km.KeyKind.P256
    return km.KeyKind.RSA3072 if suite.key_size == 3072 else km.KeyKind.RSA2048


class KeystoreKeys:
    """``KeySource`` over the keystore actor; caches the ``PrivateKey`` handles it made."""

    def __init__(self, client: KeystoreClient, suite: Suite) -> None:
        self.client = client
        self.suite = suite
        self._cache: dict[str, PrivateKey] = {}

    async def create(self, name: str, exchange: bool) -> PrivateKey:
        usage = km.KeyUsage.EXCHANGE if exchange else km.KeyUsage.SIGN
        try:
            info = await self.client.create_key(name, key_kind(self.suite), usage)
            label = info.label
        except KeyExists:
            label = self.client.label(name)
        return await self.get(label)

    async def get(self, label: str) -> PrivateKey:
        key = self._cache.get(label)
        if key is None:
            key = await self.client.private_key(label, self.suite.oaep_hash)
            self._cache[label] = key
        return key
