"""A suite whose mechanism the token lacks is refused clearly over the bus (SoftHSM2 2.6 has
RSA-OAEP with SHA-1 only, so suite rsa2048-oaep256 cannot decrypt there)."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import padding

from keystore import messages as m
from keystore.errors import Unsupported
from tests.fixtures_keystore import KeystoreDeployment

pytestmark = pytest.mark.integration


async def test_oaep_sha256_refused_naming_mechanism_and_suite(
    keystore_deployment: KeystoreDeployment,
) -> None:
    """Single and batch decrypt for rsa2048-oaep256 are ``Unsupported`` with a text naming
    the mechanism, its hash and the suite; the same key still decrypts OAEP-SHA1."""
    gateway = await keystore_deployment.client(f"gateway.m{os.urandom(3).hex()}")
    info = await gateway.create_key("kex", m.KeyKind.RSA2048, m.KeyUsage.EXCHANGE)
    key = await gateway.private_key(info.label, oaep_hash="sha256")
    assert key.suite.name == "rsa2048-oaep256"
    h = key.suite.oaep_hash_algorithm()
    ct = key.public_key().encrypt(b"k" * 32, padding.OAEP(padding.MGF1(h), h, None))  # type: ignore[union-attr]

    with pytest.raises(Unsupported) as refused:
        await key.decrypt(ct)  # not a ProtocolError(DECRYPTION_FAILURE): the sender is fine
    text = refused.value.text
    assert "CKM_RSA_PKCS_OAEP" in text and "SHA-256" in text
    assert "rsa2048-oaep256" in text and info.label in text
    [item] = await gateway.decrypt_many(info.label, [ct], m.OaepHash.SHA256)
    assert isinstance(item, Unsupported) and "rsa2048-oaep256" in item.text

    sha1 = (await gateway.private_key(info.label)).suite.oaep_hash_algorithm()
    ct1 = key.public_key().encrypt(b"k" * 32, padding.OAEP(padding.MGF1(sha1), sha1, None))  # type: ignore[union-attr]
    assert await gateway.decrypt(info.label, ct1, m.OaepHash.SHA1) == b"k" * 32
    outcomes = [
        (e["op"], e["outcome"])
        for e in keystore_deployment.audit_events()
        if e.get("label") == info.label and e["op"] == "decrypt"
    ]
    assert outcomes == [("decrypt", "unsupported")] * 2 + [("decrypt", "ok")]
