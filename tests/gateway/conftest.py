"""Gateway fixtures: the session CA (tests/ca), an issuer host on 127.0.0.1, a registered
gateway actor in this process, a registered merchant that talks to it and three cardholders.

Rule 1: one deployment per session (RSA keys are slow in SoftHSM2); tests use fresh XIDs and
RRPIDs, so they do not depend on each other.
Rule 2: the test plays cardholder and merchant with protocol/payment.py and
protocol/dualsig.py; every key (cardholder, merchant, gateway) lives in the keystore's token.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from actors.gateway.actor import GatewayActor
from actors.gateway.identity import GatewayIdentity, identity_path, ledger_path, register
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from actors.issuer.seed import SeedAccount, seed
from broker.peer import PeerLink
from keystore.keyring import KeyRing
from protocol import codec, dualsig, ids, linkage, pan
from protocol import payment as pw
from protocol import pin as pin_blocks
from protocol.certs import cert_thumbprint, certificate_der, public_key_of
from protocol.keys import PrivateKey, get_suite, suite_for_public_key
from protocol.messages import (
    AuthReqData,
    AuthReqPayload,
    AuthResBaggage,
    AuthResData,
    AuthTags,
    CheckDigests,
    CurrAmt,
    EntityKind,
    Error,
    ErrorTBS,
    IDData,
    MerTermIDs,
    OIData,
    PIHead,
    PinEntry,
    PurchaseInputs,
    TransIDs,
)
from protocol.requester import CAClient, register_cardholder, register_entity
from protocol.wrapper import decode_message
from tests.fixtures_ca import CAEnv, new_key

MERCHANT_ID = "M-3001"
BRAND = "alpha"
NOW = datetime.now(UTC)
VALID = f"{(NOW.year + 3) % 100:02d}12"
LAPSED = f"{(NOW.year - 1) % 100:02d}12"
ORDER_DESC = b"ORDER-DESCRIPTION: 2 x 'The Secret Garden', gift wrapped"


def _pan(prefix: str) -> str:
    return prefix + pan.luhn_check_digit(prefix)


# Cards of brand alpha (BINs 411111, 400000) as the issuer host knows them.
ACCOUNTS = {
    "ok": SeedAccount("gw-ok", "card", "alpha", "4111111111111111", VALID, 500_000, 0),
    "low": SeedAccount("gw-low", "card", "alpha", "4000000000000002", VALID, 5_000, 0),
    "stolen": SeedAccount(
        "gw-stolen", "card", "alpha", _pan("400000000000123"), VALID, 500_000, 0, stolen=True
    ),
    # The host holds a lapsed date; the card registered with another: field 14 → 54.
    "expired": SeedAccount("gw-exp", "card", "alpha", _pan("400000000000456"), LAPSED, 500_000, 0),
    # After authorization (test_capture.py, test_after_properties.py): many purchases.
    "after": SeedAccount(
        "gw-after",
        "card",
        "alpha",
        _pan("400000000000789"),
        VALID,
        10_000_000,
        0,
        velocity_count=100_000,
    ),
}


@dataclass
class Card:
    key: PrivateKey
    cert: x509.Certificate
    chain: list[x509.Certificate]
    number: str
    expiry: str
    pan_secret: bytes = field(repr=False)

    @property
    def thumb(self) -> bytes:
        return cert_thumbprint(self.cert)


@dataclass
class Purchase:
    data: AuthReqData
    pi: bytes
    oi_data: bytes


@dataclass
class GatewayEnv:
    ca: CAEnv
    actor: GatewayActor
    identity: GatewayIdentity
    issuer_store_path: Path
    ledger_path: Path
    client: CAClient  # the merchant's transport to the gateway role
    m_sig: PrivateKey
    m_kx: PrivateKey
    m_certs: list[x509.Certificate]
    cards: dict[str, Card]

    @property
    def m_sig_thumb(self) -> bytes:
        return cert_thumbprint(self.m_certs[0])

    @property
    def m_kx_thumb(self) -> bytes:
        return cert_thumbprint(self.m_certs[1])

    @property
    def gw_kx_thumb(self) -> bytes:
        return cert_thumbprint(self.identity.kx_cert)

    async def purchase(
        self,
        card: str = "ok",
        amount: int = 1_500,
        *,
        auth_amount: int | None = None,
        capture_now: bool = False,
        pin: str | None = None,
    ) -> Purchase:
        """Cardholder side (dual signature) and merchant side (AuthReqData) of one order."""
        c = self.cards[card]
        now = ids.SystemClock().now_ms()
        trans = TransIDs(ids.new_lid(), ids.new_lid(), ids.new_xid(), now, None, "en")
        od_salt = ids.new_challenge()
        hod = linkage.digest_of("HOD", codec.packb([ORDER_DESC, amount, od_salt]))
        oi = codec.encode(
            OIData(trans, ids.new_rrpid(), ids.new_challenge(), hod, od_salt, None, BRAND, "411111")
        )
        head = PIHead(
            trans,
            PurchaseInputs(hod, CurrAmt("JPY", amount)),
            MERCHANT_ID,
            self.m_sig_thumb,
            self.gw_kx_thumb,
            None,
            ids.new_challenge(),
            "setpay-test-wallet",
            None,
            pan.AccountKind.CARD,
            None if pin is None else PinEntry.PIN_SECURE,
        )
        pan_data = pan.make_pan_data(
            pan.Account(pan.AccountKind.CARD, c.number), c.expiry, c.pan_secret
        )
        gw_kx = public_key_of(self.identity.kx_cert)
        seal = None
        if pin is not None:  # the thin client's seal, bound to this XID
            seal = await pin_blocks.seal_pin(
                suite_for_public_key(gw_kx), gw_kx, self.gw_kx_thumb, trans.xid, pin, c.number
            )
        parts = await dualsig.make_dual_signed(
            c.key,
            c.thumb,
            suite_for_public_key(gw_kx),
            gw_kx,
            self.gw_kx_thumb,
            self.m_sig_thumb,
            codec.encode(head),
            codec.encode(pan_data),
            oi,
            seal,
        )
        # The merchant's own check before it forwards the PI unopened.
        dualsig.verify_oi_at_merchant(
            parts.pi, parts.oi_data, parts.pi_digest, c.key.public_key(),
            self.m_sig_thumb, self.gw_kx_thumb,
        )  # fmt: skip
        data = AuthReqData(
            AuthTags(ids.new_rrpid(), MerTermIDs(MERCHANT_ID, None, None), now, trans),
            CheckDigests(dualsig.oi_digest(oi), hod),
            AuthReqPayload(False, CurrAmt("JPY", auth_amount or amount), None, None, None),
            capture_now,
            None,
        )
        return Purchase(data, parts.pi, oi)

    async def wrap(self, data: AuthReqData, pi: bytes, card: str = "ok") -> bytes:
        """The merchant's wrapped AuthReq (protocol/payment.py), with every certificate needed."""
        c = self.cards[card]
        certs: list[bytes] = []
        for cert in (*self.m_certs, c.cert, *c.chain):
            der = certificate_der(cert)
            if der not in certs:
                certs.append(der)
        gw_kx = public_key_of(self.identity.kx_cert)
        req = await pw.build_auth_req(
            self.m_sig, self.m_sig_thumb, suite_for_public_key(gw_kx), gw_kx,
            self.gw_kx_thumb, data, pi, certs,
        )  # fmt: skip
        return pw.wrap_auth_req(ids.SystemClock().now_ms(), req, data)

    async def send(self, wrapped: bytes) -> tuple[str, bytes]:
        return await self.client.request_raw(pw.AUTH_REQ_TYPE, wrapped)

    async def answer(self, reply: bytes) -> tuple[AuthResData, AuthResBaggage]:
        """Open a reply as the merchant; a SET Error fails the test with its code."""
        decoded = decode_message(reply, now_ms=ids.SystemClock().now_ms())
        if isinstance(decoded.body, Error):
            code = codec.decode(ErrorTBS, decoded.body.content).code
            raise AssertionError(f"gateway answered Error {code.name}")
        data, baggage = await pw.open_auth_res(
            self.m_kx, self.m_kx_thumb, decoded.body, public_key_of(self.identity.sig_cert)
        )
        pw.check_auth_header(decoded.header, data.auth_tags)
        return data, baggage

    async def authorize(self, p: Purchase, card: str = "ok") -> tuple[AuthResData, AuthResBaggage]:
        _, reply = await self.send(await self.wrap(p.data, p.pi, card))
        return await self.answer(reply)

    def host_count(self, rrn: str) -> int:
        """Transactions the issuer host recorded under ``rrn``."""
        with sqlite3.connect(self.issuer_store_path) as db:
            return int(
                db.execute("SELECT COUNT(*) FROM transactions WHERE rrn = ?", (rrn,)).fetchone()[0]
            )


def error_code_or_none(reply: bytes) -> Any:
    """The SET Error code of a reply, or None if the reply is not an Error."""
    decoded = decode_message(reply, now_ms=ids.SystemClock().now_ms())
    if not isinstance(decoded.body, Error):
        return None
    return codec.decode(ErrorTBS, decoded.body.content).code


def error_code(reply: bytes) -> Any:
    decoded = decode_message(reply, now_ms=ids.SystemClock().now_ms())
    assert isinstance(decoded.body, Error), f"expected an Error, got {type(decoded.body).__name__}"
    return codec.decode(ErrorTBS, decoded.body.content).code


@pytest.fixture(scope="session")
async def gateway_env(
    ca_env: CAEnv,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[GatewayEnv]:
    from tests.issuer.softsecurity import SoftIssuerSecurity

    data_dir = tmp_path_factory.mktemp("gateway-var")
    security = SoftIssuerSecurity()
    store_path = data_dir / "issuer.sqlite"
    store = Store(store_path)
    await seed(store, security, list(ACCOUNTS.values()), security.pin_block)
    host = IssuerHost(store, security)
    await host.start()

    gw_client, gw_keys = await ca_env.requester("gateway.gw1")
    identity = await register(
        gw_client, KeyRing(gw_keys, get_suite(ca_env.settings.suite)), root=ca_env.root,
        brand=BRAND, gateway_id="P-3001",
        acquirer_bin="411111",
    )  # fmt: skip
    await gw_client.close()
    await gw_keys.close()
    identity.save(identity_path(data_dir, "gw1"))
    deployment = ca_env.deployment
    actor = GatewayActor(
        ca_env.settings.replace(data_dir=data_dir),
        "gw1",
        url=deployment.url_for("gateway.gw1"),
        keystore_queue=deployment.queue,
        issuer_port=host.port,
    )
    await actor.start()

    m_client, m_keys = await ca_env.requester("merchant.m1")
    m_sig, m_kx = await new_key(m_keys, "sig"), await new_key(m_keys, "kx", exchange=True)
    m_reg = await register_entity(
        m_client, root=ca_env.root, brand=BRAND, requester=EntityKind.MERCHANT,
        id_data=IDData(MERCHANT_ID, "411111", None), sig_key=m_sig, kx_key=m_kx,
        values={"merchant_id": MERCHANT_ID, "merchant_name": "Example Books", "mcc": "5942"},
    )  # fmt: skip
    await m_client.close()
    to_gateway = CAClient(
        await PeerLink(m_keys.rpc.bus, "merchant", "m1", target=pw.GATEWAY_ROLE).start()
    )

    w_client, w_keys = await ca_env.requester("wallet.w1")
    cards: dict[str, Card] = {}
    for name, account in ACCOUNTS.items():
        key = await new_key(w_keys, f"card-{name}")
        expiry = VALID if name == "expired" else (account.expiry or VALID)
        reg = await register_cardholder(
            w_client, root=ca_env.root, brand=BRAND,
            account=pan.Account(pan.AccountKind.CARD, account.reference), expiry=expiry,
            key=key, values={"name": "Hanako Test", "postal_code": "100-0001"},
        )  # fmt: skip
        number = account.reference
        cards[name] = Card(key, reg.cert, list(reg.chain), number, expiry, reg.pan_secret)
    await w_client.close()
    env = GatewayEnv(
        ca_env, actor, identity, store_path, ledger_path(data_dir, "gw1"), to_gateway,
        m_sig, m_kx, [m_reg.sig_cert, m_reg.kx_cert, *m_reg.chain], cards,
    )  # fmt: skip
    try:
        yield env
    finally:
        await to_gateway.close()
        await m_keys.close()
        await w_keys.close()
        await actor.stop()
        await host.stop()
        store.close()
