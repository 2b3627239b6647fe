"""Headless Chromium (Debian's, driven by Playwright) that trusts exactly the test CA it is
given, the way a user's browser trusts a deployment's CA: nothing else.

Chromium on Linux reads trust anchors from an NSS database; rather than writing one per test
(another package, certutil), it is launched with ``--ignore-certificate-errors-spki-list``
naming the SHA-256 of the test CA's public key: a chain that does not end in that key is
still refused (``test_a_page_under_another_ca_is_refused`` proves it), where Playwright's
``ignore_https_errors`` would accept any certificate at all.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHROMIUM = "/usr/bin/chromium"


def spki_pin(ca_pem: Path) -> str:
    """Base64 SHA-256 of the certificate's SubjectPublicKeyInfo (Chromium's pin format)."""
    cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def launch(playwright: Any, *trusted: Path) -> Any:
    """A headless Chromium trusting only the CAs in ``trusted`` (PEM files)."""
    pins = ",".join(spki_pin(p) for p in trusted)
    return await playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=[f"--ignore-certificate-errors-spki-list={pins}"],
    )  # fmt: skip
