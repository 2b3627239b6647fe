"""Host timeout: a retryable decline, the reversal stored and forwarded, the PI released."""

from __future__ import annotations

from pathlib import Path

from actors.entrypoint import SetEntry
from actors.gateway.ledger import Ledger
from actors.gateway.service import GatewayService, rrn_of
from actors.iso8583.link import IsoLink
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from actors.issuer.seed import seed
from protocol import ids
from protocol.messages import AuthCode, AuthReqData, AuthTags
from tests.gateway.conftest import ACCOUNTS, GatewayEnv
from tests.issuer.softsecurity import SoftIssuerSecurity


async def test_host_timeout_is_no_reply_with_reversal_and_pi_released(
    gateway_env: GatewayEnv, tmp_path: Path
) -> None:
    security = SoftIssuerSecurity()
    store = Store(tmp_path / "slow-issuer.sqlite")
    await seed(store, security, [ACCOUNTS["ok"]], security.pin_block)
    host = IssuerHost(store, security, latency=1.0)
    await host.start()
    link = IsoLink("127.0.0.1", host.port, tmp_path / "link.sqlite", deadline=0.3)
    await link.start()
    keys = await gateway_env.ca.deployment.client("gateway.gw1")
    ident = gateway_env.identity
    ledger = Ledger(tmp_path / "ledger.sqlite")
    service = GatewayService(
        ident, await keys.private_key(ident.sig_label), await keys.private_key(ident.kx_label),
        ledger, link,
    )  # fmt: skip
    try:
        p = await gateway_env.purchase("ok", 1_700)
        wrapped = await gateway_env.wrap(p.data, p.pi)
        reply = await SetEntry(service).handle(None, wrapped)
        assert reply is not None
        res, _ = await gateway_env.answer(reply[1])
        assert res.payload.auth_code is AuthCode.NO_REPLY
        rrn = rrn_of(p.data.auth_tags.rrpid)
        assert link.journal.saf_entries(rrn), "a reversal is stored for forwarding"
        # Same RRPID again: the stored answer, the host is not asked twice.
        assert await SetEntry(service).handle(None, wrapped) == reply
        journalled = link.journal.get(rrn)
        assert journalled is not None and journalled.state == "timed_out"
        # The PI was released: the merchant may retry the purchase under a new RRPID.
        host.latency = 0.0
        tags = p.data.auth_tags
        retry = AuthReqData(
            AuthTags(ids.new_rrpid(), tags.mer_term_ids, tags.date, tags.trans_ids),
            p.data.check_digests, p.data.payload, False, None,
        )  # fmt: skip
        reply = await SetEntry(service).handle(None, await gateway_env.wrap(retry, p.pi))
        assert reply is not None
        ok, _ = await gateway_env.answer(reply[1])
        assert ok.payload.auth_code is AuthCode.APPROVED
    finally:
        await link.close()
        ledger.close()
        await keys.close()
        await host.stop()
        store.close()
