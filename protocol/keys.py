"""Cipher suites and the private-key interface through which ``protocol/`` signs and decrypts.

Rule 1: ``protocol/`` never holds a private key. Every private-key operation goes through a
``PrivateKey`` object injected by the caller: in production the keystore client (keys live in
the PKCS#11 token), in tests of ``protocol/`` alone a software key from ``tests/``.
Rule 2: the suite is a parameter. A suite names every algorithm, so two parties agree by name.

Wire conventions every ``PrivateKey`` implementation must follow exactly:

* ``sign_digest``: input is a SHA-256 digest (32 bytes).
  RSA: RSASSA-PSS, MGF1-SHA-256, salt length 32. EC: ECDSA P-256, signature DER-encoded.
* ``decrypt`` (RSA suites): RSAES-OAEP, hash and MGF1 hash = ``suite.oaep_hash``, no label.
* ``derive`` (EC suites): ECDH on P-256 with ``peer_public`` (X9.62 uncompressed point),
  then HKDF-SHA-256 with an empty salt, the given ``info`` and ``length``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from protocol.errors import ErrorCode, ProtocolError

PSS_SALT_LENGTH = 32


class KeyType(StrEnum):
    RSA = "rsa"
    EC = "ec"


class KeyTransport(StrEnum):
    RSA_OAEP = "rsa-oaep"
    ECDH_ES = "ecdh-es-hkdf-sha256"


@dataclass(frozen=True, slots=True)
class Suite:
    """Every algorithm a deployment uses, by name. ``oaep_hash`` matters for RSA suites only."""

    name: str
    key_type: KeyType
    key_size: int  # RSA modulus bits, or EC curve bits
    transport: KeyTransport
    oaep_hash: str = "sha1"  # SoftHSM2 2.6 implements OAEP with SHA-1 only (machine-facts.md)
    aead: str = "aes-256-gcm"
    digest: str = "sha256"

    def oaep_hash_algorithm(self) -> hashes.HashAlgorithm:
        return hashes.SHA1() if self.oaep_hash == "sha1" else hashes.SHA256()  # noqa: S303


SUITES: dict[str, Suite] = {
    # OAEP-SHA1 stays IND-CCA2 secure (OAEP needs no collision resistance); SHA-256 variants
    # are for HSMs that implement them.
    "rsa2048": Suite("rsa2048", KeyType.RSA, 2048, KeyTransport.RSA_OAEP, oaep_hash="sha1"),
    "rsa3072": Suite("rsa3072", KeyType.RSA, 3072, KeyTransport.RSA_OAEP, oaep_hash="sha1"),
    "rsa2048-oaep256": Suite(
        "rsa2048-oaep256", KeyType.RSA, 2048, KeyTransport.RSA_OAEP, oaep_hash="sha256"
    ),
    "p256": Suite("p256", KeyType.EC, 256, KeyTransport.ECDH_ES),
}
DEFAULT_SUITE = SUITES["rsa2048"]


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, f"unknown suite {name!r}") from None


def suite_for_public_key(public_key: object, oaep_hash: str = "sha1") -> Suite:
    """The suite a public key belongs to (for verifying whatever a peer's cert carries)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        for suite in SUITES.values():
            if (
                suite.key_type is KeyType.RSA
                and suite.key_size == public_key.key_size
                and suite.oaep_hash == oaep_hash
            ):
                return suite
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return SUITES["p256"]
    raise ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, "public key of no supported suite")


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@runtime_checkable
class PrivateKey(Protocol):
    """A private key used through its holder (HSM keystore or test software key)."""

    @property
    def key_id(self) -> str:
        """The key's label: stable, unique per owner, never secret."""
        ...

    @property
    def suite(self) -> Suite: ...

    def public_key(self) -> PublicKey:
        """The matching public key as a ``cryptography`` object."""
        ...

    async def sign_digest(self, digest: bytes) -> bytes:
        """Sign a SHA-256 digest (RSA-PSS or DER ECDSA, see the module doc)."""
        ...

    async def decrypt(self, ciphertext: bytes) -> bytes:
        """RSA-OAEP decrypt with the suite's hash. Raises ``ProtocolError`` on failure."""
        ...

    async def derive(self, peer_public: bytes, info: bytes, length: int) -> bytes:
        """ECDH with ``peer_public`` then HKDF-SHA-256 (EC suites)."""
        ...
