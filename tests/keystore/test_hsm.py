"""Key generation and every operation of ``keystore.hsm.Hsm`` against a real SoftHSM2 token."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keystore.errors import (
    BadRequest,
    DecryptionFailed,
    KeyExists,
    KeyUsageError,
    NoSuchKey,
    Unsupported,
)
from keystore.hsm import Hsm
from keystore.messages import KeyKind, KeyUsage, OaepHash
from protocol.keys import SUITES
from protocol.primitives import verify_digest

pytestmark = pytest.mark.integration

DIGEST = hashlib.sha256(b"setpay keystore test").digest()


def _pub(der: bytes):  # type: ignore[no-untyped-def]
    return serialization.load_der_public_key(der)


def _label(name: str) -> str:
    return f"merchant.hsmtest/{name}-{os.urandom(3).hex()}"


@pytest.mark.parametrize("kind", [KeyKind.RSA2048, KeyKind.RSA3072, KeyKind.P256])
def test_signatures_verify_with_cryptography(hsm: Hsm, kind: KeyKind) -> None:
    """A signature over a digest verifies through ``cryptography`` with the key's public half."""
    info = hsm.create_key(_label("sig"), kind, KeyUsage.SIGN)
    assert info.kind is kind and info.usage is KeyUsage.SIGN
    signature = hsm.sign(info.label, DIGEST)
    verify_digest(_pub(info.public_key), DIGEST, signature)
    with pytest.raises(Exception, match="signature"):
        verify_digest(_pub(info.public_key), hashlib.sha256(b"other").digest(), signature)


def test_oaep_ciphertext_from_public_key_decrypts(hsm: Hsm) -> None:
    """OAEP-SHA1 ciphertext made with ``cryptography`` decrypts in the token."""
    info = hsm.create_key(_label("kex"), KeyKind.RSA2048, KeyUsage.EXCHANGE)
    h = SUITES["rsa2048"].oaep_hash_algorithm()
    secret = os.urandom(48)
    ct = _pub(info.public_key).encrypt(secret, padding.OAEP(padding.MGF1(h), h, None))
    assert hsm.decrypt(info.label, ct, OaepHash.SHA1) == secret
    tampered = bytes([ct[0] ^ 1]) + ct[1:]
    with pytest.raises(DecryptionFailed):
        hsm.decrypt(info.label, tampered, OaepHash.SHA1)
    # SoftHSM2 2.6 has no OAEP-SHA256: a clear "unsupported", never a wrong answer.
    with pytest.raises(Unsupported, match=r"OAEP with SHA-256.*suite rsa2048-oaep256"):
        hsm.decrypt(info.label, ct, OaepHash.SHA256)


def test_usage_is_enforced(hsm: Hsm) -> None:
    """A signing key does not decrypt and a key-exchange key does not sign."""
    sig = hsm.create_key(_label("s"), KeyKind.RSA2048, KeyUsage.SIGN)
    kex = hsm.create_key(_label("x"), KeyKind.RSA2048, KeyUsage.EXCHANGE)
    with pytest.raises(KeyUsageError):
        hsm.decrypt(sig.label, b"\0" * 256, OaepHash.SHA1)
    with pytest.raises(KeyUsageError):
        hsm.sign(kex.label, DIGEST)
    with pytest.raises(BadRequest):
        hsm.create_key(_label("bad"), KeyKind.AES256, KeyUsage.SIGN)


def test_ecdh_derive_matches_software(hsm: Hsm) -> None:
    """ECDH in the token + HKDF equals the sender's ECDH-ES computation in software."""
    info = hsm.create_key(_label("ecdh"), KeyKind.P256, KeyUsage.EXCHANGE)
    recipient = _pub(info.public_key)
    eph = ec.generate_private_key(ec.SECP256R1())
    eph_pub = eph.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    expected = HKDF(hashes.SHA256(), 32, salt=None, info=b"ctx").derive(
        eph.exchange(ec.ECDH(), recipient)
    )
    assert hsm.derive(info.label, eph_pub, b"ctx", 32) == expected
    with pytest.raises(DecryptionFailed):
        hsm.derive(info.label, b"\x04" + b"\x01" * 64, b"ctx", 32)


def test_hmac_and_aes_gcm(hsm: Hsm) -> None:
    """HMAC is deterministic per key; GCM opens what it sealed and refuses tampering."""
    mac = hsm.create_key(_label("pvk"), KeyKind.HMAC256, KeyUsage.SECRET)
    assert hsm.hmac(mac.label, b"data") == hsm.hmac(mac.label, b"data")
    assert hsm.hmac(mac.label, b"data") != hsm.hmac(mac.label, b"datb")
    aes = hsm.create_key(_label("dek"), KeyKind.AES256, KeyUsage.SECRET)
    sealed = hsm.seal(aes.label, b"card data", b"wallet-1")
    assert sealed != hsm.seal(aes.label, b"card data", b"wallet-1")  # fresh nonce
    assert hsm.open_sealed(aes.label, sealed, b"wallet-1") == b"card data"
    with pytest.raises(DecryptionFailed):
        hsm.open_sealed(aes.label, sealed, b"wallet-2")
    with pytest.raises(DecryptionFailed):
        hsm.open_sealed(aes.label, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"wallet-1")
    with pytest.raises(KeyUsageError):
        hsm.hmac(aes.label, b"data")


def test_labels_are_unique_and_listed(hsm: Hsm) -> None:
    """Creating a taken label fails; list returns the owner's keys only; unknown is NoSuchKey."""
    label = f"wallet.list{os.urandom(2).hex()}/k1"
    hsm.create_key(label, KeyKind.P256, KeyUsage.SIGN)
    with pytest.raises(KeyExists):
        hsm.create_key(label, KeyKind.P256, KeyUsage.SIGN)
    owner = label.split("/")[0]
    hsm.create_key(f"{owner}/k2", KeyKind.AES256, KeyUsage.SECRET)
    listed = hsm.list_keys(owner)
    assert [k.label for k in listed] == [f"{owner}/k1", f"{owner}/k2"]
    assert listed[0].public_key and listed[1].public_key == b""
    with pytest.raises(NoSuchKey):
        hsm.sign(f"{owner}/absent", DIGEST)


def test_session_invalidated_under_the_worker_recovers(hsm: Hsm) -> None:
    """Closing the session behind the Hsm's back: the next request re-opens and succeeds."""
    info = hsm.create_key(_label("reopen"), KeyKind.P256, KeyUsage.SIGN)
    hsm.sign(info.label, DIGEST)
    before = hsm.reopens
    hsm.session.close()  # C_CloseSession: handle now invalid, login gone
    signature = hsm.sign(info.label, DIGEST)
    verify_digest(_pub(info.public_key), DIGEST, signature)
    assert hsm.reopens == before + 1
