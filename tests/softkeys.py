"""Software implementation of ``protocol.keys.PrivateKey`` for tests of ``protocol/`` alone.

Only tests use this: in the product every private key lives in the PKCS#11 token.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import DEFAULT_SUITE, PSS_SALT_LENGTH, KeyType, PublicKey, Suite

_counter = 0


class SoftKey:
    """A private key held in process memory (tests only)."""

    def __init__(self, suite: Suite = DEFAULT_SUITE, label: str | None = None) -> None:
        global _counter
        _counter += 1
        self._suite = suite
        self._label = label or f"soft-{suite.name}-{_counter}"
        if suite.key_type is KeyType.RSA:
            self._key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(
                65537, suite.key_size
            )
        else:
            self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def key_id(self) -> str:
        return self._label

    @property
    def suite(self) -> Suite:
        return self._suite

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    @property
    def private_key_for_tests(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        """The raw key, for building fixtures such as self-signed test roots."""
        return self._key

    async def sign_digest(self, digest: bytes) -> bytes:
        prehashed = utils.Prehashed(hashes.SHA256())
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(
                digest,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH),
                prehashed,
            )
        return self._key.sign(digest, ec.ECDSA(prehashed))

    async def decrypt(self, ciphertext: bytes) -> bytes:
        if not isinstance(self._key, rsa.RSAPrivateKey):
            raise ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, "decrypt needs an RSA key")
        h = self._suite.oaep_hash_algorithm()
        try:
            return self._key.decrypt(
                ciphertext, padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)
            )
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
