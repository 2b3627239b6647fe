"""The issuer service as the supervisor runs it: lifecycle, health file, serving."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

from actors.iso8583.codes import ResponseCode
from actors.iso8583.link import IsoLink, LinkRequest
from actors.issuer.accounts import Store
from actors.issuer.seed import environment_accounts, seed
from actors.issuer.service import IssuerService
from setpay.config import Settings
from tests.issuer.softsecurity import SoftIssuerSecurity


async def test_service_serves_until_stopped_and_reports_health(tmp_path: Path) -> None:
    """run() listens, writes a ready health file with its port, serves a link, and on
    request_stop finishes and writes 'stopped'; the seeded store survives the restart."""
    security = SoftIssuerSecurity()
    db = tmp_path / "issuer.sqlite"
    store = Store(db)
    accounts = {a.name: a for a in environment_accounts(datetime.now(UTC))}
    await seed(store, security, list(accounts.values()), security.pin_block)
    store.close()
    health = tmp_path / "issuer.host1.health"
    settings = Settings(data_dir=tmp_path)
    for round_ in range(2):
        service = IssuerService(
            settings, "host1", port=0, db_path=db, security=security, health_file=health
        )
        running = asyncio.create_task(service.run())
        await asyncio.wait_for(service.ready.wait(), 10)
        facts = json.loads(health.read_text())
        assert facts["ready"] is True and facts["port"] == service.port > 0
        link = IsoLink("127.0.0.1", service.port, tmp_path / f"link{round_}.sqlite")
        await link.start()
        try:
            result = await link.request(
                LinkRequest(f"SVC{round_:09d}", accounts["visa-ok"].reference, 1_000)
            )
            assert result.code is ResponseCode.APPROVED
            assert await link.echo() is ResponseCode.APPROVED
        finally:
            await link.close()
        service.request_stop()
        assert await asyncio.wait_for(running, 10) == 0
        facts = json.loads(health.read_text())
        assert facts["state"] == "stopped" and facts["handled"] == 2
    check = Store(db)
    try:
        snap = check.snapshot(await security.pan_index(accounts["visa-ok"].reference))
        assert snap is not None and snap.held == 2_000
    finally:
        check.close()
