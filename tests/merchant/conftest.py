"""A purchase deployment over the real RabbitMQ and SoftHSM2: the CA (tests/ca), a merchant
POS actor, a wallet service and a test gateway that opens AuthReqs with its real keys.

Rule 1: every party is its own broker identity with its own keys in the token; the test
gateway uses ``protocol/payment.py`` and ``protocol.dualsig`` exactly as a gateway must.
Rule 2: everything lives in the session's vhost and temporary directories.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors.merchant.actor import MerchantActor
from actors.merchant.enroll import enroll_merchant
from actors.wallet.service import WalletService
from actors.wallet.store import WalletStore
from actors.web.tls import ensure_test_certificate
from broker.consumer import Delivery, consume
from broker.peer import PeerLink
from broker.topology import SET_EXCHANGE, declare_actor
from keystore.keyring import KeyRing
from protocol import codec, dualsig, ids
from protocol import payment as pw
from protocol.certs import (
    CertType,
    KeyUse,
    cert_thumbprint,
    certificate_der,
    public_key_of,
    set_extension,
)
from protocol.keys import PrivateKey, get_suite
from protocol.messages import (
    AuthCode,
    AuthResBaggage,
    AuthResData,
    AuthResPayload,
    EntityKind,
    IDData,
    ResponseData,
)
from protocol.requester import CAClient, EntityRegistration, register_entity
from protocol.trustview import Trust, load_all, pick
from protocol.wrapper import decode_message
from tests.fixtures_ca import CAEnv
from tests.ops.environments import free_port

MERCHANT_ID = "M-3201"  # merchant ids are bound to one identity per CA: one per package
GATEWAY_ROUTE = "gateway.ptest"


def _open_gate() -> asyncio.Event:
    gate = asyncio.Event()
    gate.set()
    return gate


@dataclass
class TestGateway:
    """Opens each AuthReq with the gateway's real keys and answers an approving AuthRes."""

    bus: Any
    reg: EntityRegistration
    sig: PrivateKey
    kx: PrivateKey
    root: Any
    seen: list[dualsig.GatewayView] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    cap_tokens: list[bytes] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)  # every AuthReq as it arrived
    gate: asyncio.Event = field(default_factory=_open_gate)  # cleared: answers wait for it

    async def handle(self, delivery: Delivery) -> None:
        self.requests.append(delivery.body)
        await self.gate.wait()
        now = ids.SystemClock().now_ms()
        decoded = decode_message(delivery.body, now_ms=now)
        trust = Trust.load(self.root, self.reg.ca.brand, [self.reg.ca.brand_cert],
                           self.reg.ca.bci, self.reg.ca.crls, now)  # fmt: skip
        certs = load_all(decoded.body.certs)

        def sender(thumb: bytes) -> Any:
            leaf = pick(certs, thumb)
            trust.validate(leaf, certs, CertType.MERCHANT, KeyUse.SIGNATURE, now)
            return public_key_of(leaf)

        kx_thumb = cert_thumbprint(self.reg.kx_cert)
        data, pi, signer = await pw.open_auth_req(self.kx, kx_thumb, decoded.body, sender)
        pw.check_auth_header(decoded.header, data.auth_tags)
        holder = pick(certs, codec.decode(dualsig.PIDualSigned, pi).signature.signer)
        trust.validate(holder, certs, CertType.CARDHOLDER, KeyUse.SIGNATURE, now)
        assert data.check_digests is not None
        view = await dualsig.open_at_gateway(
            pi, self.kx, kx_thumb, public_key_of(holder), signer, data.check_digests.hoi_data
        )
        self.seen.append(view)
        mkx = next(c for c in certs if _is_merchant_kx(c))
        token = ids.new_challenge()  # stands in for a sealed CapToken: opaque to the merchant
        self.cap_tokens.append(token)
        res_data = AuthResData(
            data.auth_tags, None,
            AuthResPayload(data.payload.auth_req_amt, AuthCode.APPROVED,
                           ResponseData("123456", None, None, None)),
            None, None,
        )  # fmt: skip
        res = await pw.build_auth_res(
            self.sig, cert_thumbprint(self.reg.sig_cert), get_suite("rsa2048"),
            public_key_of(mkx), cert_thumbprint(mkx), res_data,
            AuthResBaggage(token, None, None),
            [certificate_der(self.reg.sig_cert)] + [certificate_der(c) for c in self.reg.chain],
        )  # fmt: skip
        wrapped = pw.wrap_auth_res(now, res, res_data)
        self.sent.append(wrapped)
        message = self.bus.message(
            wrapped, msg_type=pw.AUTH_RES_TYPE, correlation_id=delivery.correlation_id
        )
        await self.bus.publish(delivery.reply_to or "", message, exchange=SET_EXCHANGE)


def _is_merchant_kx(cert: Any) -> bool:
    ext = set_extension(cert)
    return ext.cert_type is CertType.MERCHANT and ext.key_use is KeyUse.KEY_EXCHANGE


@dataclass
class PurchaseEnv:
    ca: CAEnv
    merchant: MerchantActor
    gateway: TestGateway
    wallet: WalletService
    merchant_dir: Path
    received: list[bytes]


@pytest.fixture(scope="session")
async def purchase_env(
    ca_env: CAEnv, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[PurchaseEnv]:
    dep = ca_env.deployment
    # The gateway: its own identity, keys and certificates, and a queue of its own.
    gw_keystore = await dep.client("gateway.ptest")
    gw_keys = KeyRing(gw_keystore, get_suite("rsa2048"))
    gw_sig, gw_kx = await gw_keys.create("sig", False), await gw_keys.create("kx", True)
    gw_ca = CAClient(await PeerLink(gw_keystore.rpc.bus, "gateway", "ptest-ca").start())
    reg = await register_entity(
        gw_ca, root=ca_env.root, brand="alpha", requester=EntityKind.GATEWAY,
        id_data=IDData(None, None, "P-T"),
        sig_key=gw_sig, kx_key=gw_kx,
        values={"gateway_id": "P-T", "currencies": "JPY", "pin_debit": "yes", "sale": "yes"},
    )  # fmt: skip
    gateway = TestGateway(gw_keystore.rpc.bus, reg, gw_sig, gw_kx, ca_env.root)
    declared = await declare_actor(await gw_keystore.rpc.bus.channel(), "gateway", "ptest")
    gw_consumer = await consume(gw_keystore.rpc.bus, declared.instance.name, gateway.handle)
    # The merchant POS: enrolled through the CA, then started as an actor.
    merchant_dir = tmp_path_factory.mktemp("merchant-var")
    settings = ca_env.settings.replace(data_dir=merchant_dir, pos_web_port=free_port())
    ensure_test_certificate(settings)  # its HTTPS front door (the supervisor makes it in an env)
    m_keystore = await dep.client("merchant.pos1")
    m_ca = CAClient(await PeerLink(m_keystore.rpc.bus, "merchant", "pos1-ca").start())
    actor = MerchantActor(
        settings, "pos1", url=dep.url_for("merchant.pos1"), keystore_queue=dep.queue,
        gateway_target=GATEWAY_ROUTE, gateway_timeout=5.0,
    )  # fmt: skip
    await actor.start()
    assert actor.store is not None and actor.service is not None
    await enroll_merchant(
        actor.store, KeyRing(m_keystore, get_suite("rsa2048")), m_ca, root=ca_env.root,
        brand="alpha", merchant_id=MERCHANT_ID, name="Example Books", mcc="5942",
    )  # fmt: skip
    actor.service.add_gateway("alpha", reg.kx_cert, reg.chain)
    received: list[bytes] = []
    handle = actor.default_handler  # the SET entrypoint every message goes through
    assert handle is not None

    async def recording(delivery: Delivery) -> tuple[str, bytes] | None:
        received.append(delivery.body)
        return await handle(delivery)

    actor.default_handler = recording
    # The wallet service (in-process) as identity wallet.w1.
    w_keystore = await dep.client("wallet.w1")
    bus = w_keystore.rpc.bus
    peers = await PeerLink(bus, "wallet", "w1-peer", timeout=15.0).start()
    w_ca = CAClient(await PeerLink(bus, "wallet", "w1-ca").start())
    store = WalletStore.open(tmp_path_factory.mktemp("wallet-var"), "w1")
    wallet = WalletService(store, w_keystore, peers, w_ca, root=ca_env.root)
    await wallet.start()
    try:
        yield PurchaseEnv(ca_env, actor, gateway, wallet, merchant_dir, received)
    finally:
        await peers.close()
        await w_ca.close()
        store.close()
        await actor.stop()
        await m_ca.close()
        await gw_consumer.stop()
        await gw_ca.close()
