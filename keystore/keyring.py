"""One key ring per party, bound to the configured suite: the only way an actor creates or
uses a private key.

Rule 1: a party never holds private key material; ``KeyRing`` hands out
``protocol.keys.PrivateKey`` objects whose operations run in the token, through the keystore.
Rule 2: every key a ring creates is of its suite's kind (RSA-2048, RSA-3072 or P-256) and
every key it opens decrypts with its suite's OAEP hash; peers' public keys are read under the
same suite (``peer_suite``), so a party can never seal with one OAEP hash what its peer
opens with another.
Rule 3: creating a key that already exists (a crash between key and certificate) reuses it,
so a registration or ``setpay ca init`` can be re-run after any failure.
"""

from __future__ import annotations

from typing import Protocol

from keystore import messages as km
from keystore.client import KeystoreClient
from keystore.errors import KeyExists
from protocol.keys import KeyType, PrivateKey, PublicKey, Suite, suite_for_public_key


class KeySource(Protocol):
    """Where keys come from (a ``KeyRing``; tests may give software keys)."""

    async def create(self, name: str, exchange: bool) -> PrivateKey:
        """A new key pair ``name`` (signature, or key exchange when ``exchange``)."""
        ...

    async def get(self, label: str) -> PrivateKey:
        """The key pair stored under ``label`` (as returned in ``PrivateKey.key_id``)."""
        ...


def key_kind(suite: Suite) -> km.KeyKind:
    """The token key kind of ``suite``'s keys."""
    if suite.key_type is KeyType.EC:
        return km.KeyKind.P256
    return km.KeyKind.RSA3072 if suite.key_size == 3072 else km.KeyKind.RSA2048


class KeyRing:
    """A party's keys in the keystore, of ``suite`` (Rules 1-3); caches the handles it made."""

    def __init__(self, client: KeystoreClient, suite: Suite) -> None:
        self.client = client
        self.suite = suite
        self._cache: dict[str, PrivateKey] = {}

    async def create(self, name: str, exchange: bool) -> PrivateKey:
        """The key ``name`` of this ring's suite, created in the token unless it exists."""
        usage = km.KeyUsage.EXCHANGE if exchange else km.KeyUsage.SIGN
        try:
            info = await self.client.create_key(name, key_kind(self.suite), usage)
            label = info.label
        except KeyExists:
            label = self.client.label(name)
        return await self.get(label)

    async def get(self, label: str) -> PrivateKey:
        """The key stored under ``label``, opened with this ring's suite."""
        key = self._cache.get(label)
        if key is None:
            key = await self.client.private_key(label, self.suite.oaep_hash)
            self._cache[label] = key
        return key

    def label(self, name: str) -> str:
        """The token label of this party's key ``name``."""
        return self.client.label(name)

    def peer_suite(self, public_key: PublicKey) -> Suite:
        """The suite a peer's public key is used under: its kind, this ring's OAEP hash."""
        return suite_for_public_key(public_key, self.suite.oaep_hash)
