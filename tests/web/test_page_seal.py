"""The web wallet's PIN seal, made by its own script in real headless Chromium (WebCrypto),
opened by the product's Python path (``protocol.pin.open_pin_seal``: the same
``seal_wrap``/``finish_open_seal`` the keystore runs) for every suite: the page seals exactly
as ``protocol.pin.seal_pin`` does, bound to the XID. The live end-to-end PIN debit through
the page and the real keystore is tests/web/test_browser_live.py."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from actors.wallet.api import PAGES
from actors.web.tls import ca_file
from protocol.errors import ProtocolError
from protocol.keys import SUITES
from protocol.pin import decode_format0, open_pin_seal
from protocol.softkey import SoftwareKey
from tests.web.chromium import launch

WALLET_PAGES = {"/": PAGES / "index.html", "/wallet.js": PAGES / "wallet.js",
                "/wallet.css": PAGES / "wallet.css"}  # fmt: skip


def self_signed(key: SoftwareKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test gateway kx")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .sign(key.private_key, hashes.SHA256())  # type: ignore[arg-type]
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
async def page(make_door: Any) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    door = await make_door(pages=WALLET_PAGES)
    async with async_playwright() as p:
        browser = await launch(p, ca_file(door.settings))  # trusts the door's test CA only
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(door.url + "/")
        yield page
        await browser.close()


@pytest.mark.parametrize("suite", ["rsa2048", "rsa2048-oaep256", "p256"])
async def test_the_page_seals_as_seal_pin_does(page: Any, suite: str) -> None:
    key = SoftwareKey(SUITES[suite], "gateway-kx")
    der = self_signed(key)
    xid = secrets.token_bytes(20)
    number = "4111110000000011"
    started = {"gateway_cert": base64.b64encode(der).decode(), "xid": xid.hex(),
               "pin_binding": number, "oaep_hash": SUITES[suite].oaep_hash}  # fmt: skip
    sealed_b64 = await page.evaluate(
        "async ([s, pin]) => b64e(await sealPin(s, pin))", [started, "482916"])
    sealed = base64.b64decode(sealed_b64)
    block = await open_pin_seal(key, sealed, xid)
    assert decode_format0(block, number) == "482916"
    assert hashlib.sha256(der).digest() in sealed  # addressed to the certificate's thumbprint
    with pytest.raises(ProtocolError):  # bound to its XID
        await open_pin_seal(key, sealed, secrets.token_bytes(20))


async def test_the_page_refuses_a_malformed_pin(page: Any) -> None:
    key = SoftwareKey(SUITES["rsa2048"], "gateway-kx")
    started = {"gateway_cert": base64.b64encode(self_signed(key)).decode(),
               "xid": "00" * 20, "pin_binding": "4111110000000011", "oaep_hash": "sha1"}
    error = await page.evaluate(
        "async (s) => { try { await sealPin(s, '12ab'); return 'sealed'; }"
        " catch (e) { return e.message; } }", started)
    assert error == "a PIN is 4-12 digits"
