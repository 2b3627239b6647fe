"""Acceptance: no generated private or secret key can be read out of the token."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from keystore.hsm import Hsm, TokenConfig
from keystore.messages import KeyKind, KeyUsage

pytestmark = pytest.mark.integration

LOCKED = "sensitive, always sensitive, never extractable, local"


@pytest.fixture(scope="module")
def locked_keys(hsm: Hsm) -> dict[str, KeyKind]:
    owner = f"gateway.x{os.urandom(3).hex()}"
    keys = {
        f"{owner}/rsa-sig": (KeyKind.RSA2048, KeyUsage.SIGN),
        f"{owner}/rsa-kex": (KeyKind.RSA3072, KeyUsage.EXCHANGE),
        f"{owner}/ec-kex": (KeyKind.P256, KeyUsage.EXCHANGE),
        f"{owner}/pvk": (KeyKind.HMAC256, KeyUsage.SECRET),
        f"{owner}/dek": (KeyKind.AES256, KeyUsage.SECRET),
    }
    for label, (kind, usage) in keys.items():
        hsm.create_key(label, kind, usage)
    return {label: kind for label, (kind, _usage) in keys.items()}


def test_pkcs11_tool_reports_every_key_locked(
    token_config: TokenConfig, locked_keys: dict[str, KeyKind]
) -> None:
    """OpenSC's pkcs11-tool (an independent reader) sees each key sensitive and unextractable."""
    tool = shutil.which("pkcs11-tool")
    assert tool is not None, "OpenSC pkcs11-tool must be installed"
    out = subprocess.run(
        [tool, "--module", token_config.module, "--token-label", token_config.token_label,
         "--login", "--pin", token_config.pin, "--list-objects"],
        capture_output=True, text=True, check=True, env=os.environ.copy(), timeout=60,
    ).stdout  # fmt: skip
    blocks = re.split(r"\n(?=\S)", out)
    seen: dict[str, str] = {}
    for block in blocks:
        if not block.startswith(("Private Key Object", "Secret Key Object")):
            continue
        label = re.search(r"label:\s+(\S+)", block)
        access = re.search(r"Access:\s+(.*)", block)
        if label and label.group(1) in locked_keys:
            assert access is not None
            seen[label.group(1)] = access.group(1).strip()
    assert seen == dict.fromkeys(locked_keys, LOCKED)


def test_values_cannot_be_read_or_wrapped(hsm: Hsm, locked_keys: dict[str, KeyKind]) -> None:
    """Reading a private exponent or secret value fails (sensitive); wrapping fails too."""
    session = hsm.session
    wrapper = session.generate_key(
        KeyType.AES, 256, store=False,
        template={Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.TOKEN: False},
    )  # fmt: skip
    try:
        for label, kind in locked_keys.items():
            if kind.asymmetric:
                key = session.get_key(label=label, object_class=ObjectClass.PRIVATE_KEY)
                secret_attr = (
                    Attribute.VALUE if kind is KeyKind.P256 else Attribute.PRIVATE_EXPONENT
                )
            else:
                key = session.get_key(label=label, object_class=ObjectClass.SECRET_KEY)
                secret_attr = Attribute.VALUE
            with pytest.raises(p11.AttributeSensitive):
                key[secret_attr]
            assert key[Attribute.SENSITIVE] is True and key[Attribute.EXTRACTABLE] is False
            # CKA_MODIFIABLE=false: SoftHSM2 answers CKR_ACTION_PROHIBITED (0x1b), which
            # python-pkcs11 0.10 leaves unmapped; other tokens say CKR_ATTRIBUTE_READ_ONLY.
            with pytest.raises(p11.PKCS11Error) as refused:
                key[Attribute.EXTRACTABLE] = True
            assert isinstance(refused.value, p11.AttributeReadOnly) or "0x1b" in str(refused.value)
            assert key[Attribute.EXTRACTABLE] is False
            with pytest.raises(p11.KeyUnextractable):
                wrapper.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    finally:
        wrapper.destroy()
