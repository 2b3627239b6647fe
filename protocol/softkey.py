"""A software ``protocol.keys.PrivateKey``: for measurement, the self-check and tests only.

Rule 1: the product never uses it; every product key lives in the PKCS#11 token. It lives in
``protocol/`` because it is pure crypto (``cryptography`` and ``protocol`` only), so the bench,
the demo's self-check and the tests share one implementation without importing ``bench/``.
Rule 2: it follows the wire conventions of ``protocol/keys.py`` exactly, so what it signs or
decrypts interoperates with the HSM-backed keys.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PSS_SALT_LENGTH, KeyType, PublicKey, Suite

RawKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def oaep(suite: Suite) -> padding.OAEP:
    """The suite's OAEP padding (hash and MGF1 hash alike, no label)."""
    h = suite.oaep_hash_algorithm()
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


def raw_sign(key: RawKey, digest: bytes) -> bytes:
    """RSA-PSS (MGF1-SHA256, salt 32) or DER ECDSA over a SHA-256 digest."""
    prehashed = utils.Prehashed(hashes.SHA256())
    if isinstance(key, rsa.RSAPrivateKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)
        return key.sign(digest, pss, prehashed)
    return key.sign(digest, ec.ECDSA(prehashed))


class SoftwareKey:
    """A private key held in process memory."""

    def __init__(self, suite: Suite, label: str) -> None:
        self._suite = suite
        self._label = label
        self._key: RawKey = (
            rsa.generate_private_key(65537, suite.key_size)
            if suite.key_type is KeyType.RSA
            else ec.generate_private_key(ec.SECP256R1())
        )

    @property
    def key_id(self) -> str:
        return self._label

    @property
    def suite(self) -> Suite:
        return self._suite

    @property
    def private_key(self) -> RawKey:
        """The raw key, for raw-crypto measurement and test fixtures such as test roots."""
        return self._key

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    async def sign_digest(self, digest: bytes) -> bytes:
        return raw_sign(self._key, digest)

    async def decrypt(self, ciphertext: bytes) -> bytes:
        if not isinstance(self._key, rsa.RSAPrivateKey):
            raise ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, "decrypt needs an RSA key")
        try:
            return self._key.decrypt(ciphertext, oaep(self._suite))
        except ValueError:
            raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "OAEP decryption failed") from None

    async def derive(self, peer_public: bytes, info: bytes, length: int) -> bytes:
        if not isinstance(self._key, ec.EllipticCurvePrivateKey):
            raise ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, "derive needs an EC key")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_public)
            shared = self._key.exchange(ec.ECDH(), peer)
        except (ValueError, InvalidKey):
            raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "bad ephemeral key") from None
        return HKDF(hashes.SHA256(), length, salt=None, info=info).derive(shared)
