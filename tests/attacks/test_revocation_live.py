"""`setpay ca revoke` reaches the running system (actors/trust.py Rule 5, the README's bound).

A whole test environment (`setpay demo`: keystore, CA, gateway, issuer host, merchant POS and
wallet, each its own process, every key in SoftHSM2, least-privilege broker logins) keeps
running while the operator revokes merchant M-1002's signature certificate with `setpay ca
revoke` on the CA's database. Purchases whose PInit the cardholder completed before the
revocation then send their AuthReq one after another: every AuthReq sent more than
``STATED_SECONDS`` after the command returned is refused by the already-running gateway with
``revokedCertificate``, and that code is what reaches the cardholder's thin client (the POS
passes the gateway's Error on); other merchants keep authorizing; a new purchase at the
revoked merchant fails at its start (the wallet validates the merchant with the BCI the POS now
hands out); no process was restarted.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from actors.environment import BRAND, LOAD_PANS, POS_INSTANCE, WALLET_INSTANCE
from actors import demo_cases
from actors.wallet.api import StartedPurchase
from actors.wallet.errors import WalletError
from broker.provision import identity_url
from protocol.messages import AuthCode, CurrAmt
from setpay.config import load
from tests.ops.environments import ROOT, SETPAY, Env, alive, new_env, remove_env

pytestmark = pytest.mark.integration

STATED_SECONDS = 10.0  # README security table: the CA polls its store every 2 s
REVOKED = "M-1002"
OTHER = "M-1001"
PASSPHRASE = "revocation test passphrase"
FORM = {"name": "Revocation Tester", "postal_code": "100-0001"}
PENDING = 24  # purchases started before the revocation, finished after it ...
SPACING = 0.5  # ... one every half second at most: together they span more than the bound


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A running environment (`setpay demo` with a short load run), removed afterwards."""
    env = new_env(tmp_path_factory.mktemp("revoc-var"), "revoc")
    try:
        demo = env.setpay("demo", "--purchases", "2", "--concurrency", "1", timeout=900)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        yield env
    finally:
        remove_env(env)


def _merchant_serial(env: Env, merchant_id: str) -> int:
    listing = env.setpay("ca", "list", "--type", "merchant")
    assert listing.returncode == 0, listing.stderr
    for line in listing.stdout.splitlines():
        if f"{merchant_id} sig" in line and " signature " in line and line.endswith("valid"):
            return int(line.split()[0])
    raise AssertionError(f"no valid signature certificate of {merchant_id}:\n{listing.stdout}")


def _revoke(env: Env, serial: int) -> None:
    """The operator's command, signing as the CA identity (its login from the environment's
    credentials, in the command's environment, not on its command line)."""
    settings = load(env.vars)
    url = identity_url(settings.data_dir, "ca.main", settings.broker_vhost, settings.amqp_url,
                       user_prefix=settings.broker_user_prefix)  # fmt: skip
    done = subprocess.run(
        [*SETPAY, "ca", "revoke", str(serial), "--reason", "keyCompromise"],
        env={**env.vars, "SETPAY_AMQP_URL": url}, cwd=ROOT, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"revoked {serial}" in done.stdout


async def test_ca_revoke_reaches_the_running_gateway(env: Env) -> None:
    settings = load(env.vars)
    before = {name: pid for name, pid in env.recorded_pids().items()}
    assert {"gateway.pg1", "merchant.pos1", "ca.main"} <= set(before), before
    wallet, shop = demo_cases.connect_clients(settings)  # the thin clients, over HTTPS
    try:
        try:
            await wallet.register("revoc-taro", PASSPHRASE)
        except WalletError as exc:
            assert "exists" in str(exc)
        session = await wallet.login("revoc-taro", PASSPHRASE)
        expiry = f"{(datetime.now(UTC).year + 3) % 100:02d}12"
        card = await session.enroll(brand=BRAND, number=LOAD_PANS[7], expiry=expiry, form=FORM)

        async def start(merchant_id: str, amount: int) -> StartedPurchase:
            description = f"revocation test at {merchant_id}: {amount} JPY"
            order = await shop.create_order(merchant_id, description, CurrAmt("JPY", amount))
            return await session.start_purchase(card_id=card, offer=order.offer)

        async def finish(started: StartedPurchase) -> str:
            try:
                out = await session.finish_purchase(started.purchase_id)
            except WalletError as exc:
                return str(exc)
            return AuthCode(out.auth_code).name if out.auth_code is not None else "no auth"

        assert await finish(await start(REVOKED, 1_000)) == "APPROVED"
        pending = [await start(REVOKED, 1_001 + i) for i in range(PENDING)]

        _revoke(env, _merchant_serial(env, REVOKED))
        revoked_at = time.monotonic()
        attempts: list[tuple[float, str]] = []
        for i, started in enumerate(pending):
            await asyncio.sleep(max(0.0, revoked_at + i * SPACING - time.monotonic()))
            sent = time.monotonic() - revoked_at
            attempts.append((sent, await finish(started)))
            if attempts[-1][1] != "APPROVED" and len(attempts) >= 2:
                if attempts[-2][1] != "APPROVED":
                    break  # two refusals in a row: the gateway holds the revocation
        refused = [(t, outcome) for t, outcome in attempts if outcome != "APPROVED"]
        assert refused, f"never refused: {attempts}"
        first = refused[0][0]
        print(f"first AuthReq refused {first:.2f} s after `ca revoke` returned: {attempts}")
        assert first <= STATED_SECONDS, attempts
        # Everything after the first refusal is refused, with the gateway's code end to end.
        after = [outcome for t, outcome in attempts if t >= first]
        assert all("REVOKED_CERTIFICATE" in outcome for outcome in after), attempts
        assert all(o == "APPROVED" for t, o in attempts if t < first), attempts

        # The other merchants of the POS keep selling; a new purchase at the revoked one fails
        # at its start: the BCI the POS hands out now lists its certificate.
        assert await finish(await start(OTHER, 1_200)) == "APPROVED"
        with pytest.raises(WalletError, match="REVOKED_CERTIFICATE"):
            await start(REVOKED, 1_300)
    finally:
        await demo_cases.close_clients(wallet, shop)

    after_pids = env.recorded_pids()
    for name in ("gateway.pg1", "merchant.pos1", "ca.main"):
        assert after_pids[name] == before[name] and alive(before[name]), name
    logs = {p.name: p.read_text() for p in env.run_dir.glob("*.log")}
    gateway_log = logs.get("gateway.pg1.log", "")
    assert "REVOKED_CERTIFICATE" in gateway_log and "trust_push_taken" in gateway_log
    assert "ca_bci_published" in logs.get("ca.main.log", "")
