"""Insider attacks on the HTTPS front doors of a live environment (`setpay demo` in a
throw-away vhost and data dir): a cardholder with a session reaching another's card, a
cross-site request riding a session cookie, guessing passphrases, telling known from unknown
names, an operator of one merchant reaching another's orders; and the operator and
cardholder CLIs end to end over HTTPS (order -> pay link -> buy -> order state). Last: no
passphrase, session token, PAN or PIN in any log or database of the wallet and the POS.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import aiohttp
import pytest

from actors import demo_cases
from actors.demo_cases import APPROVED, PASSPHRASE, WRONG_PIN
from actors.environment import (
    DEBIT_NUMBER,
    DEBIT_PIN,
    LOAD_PANS,
    OPERATOR_PASSPHRASE,
    _valid,
    operator_name,
)
from actors.merchant.api import PosClient
from actors.merchant.errors import MerchantError
from actors.wallet.api import WalletClient
from actors.wallet.errors import WalletError
from actors.web.client import ApiError, HttpApi, service_url
from actors.web.server import LOCKED, LOGIN_FAILED
from actors.web.tls import ca_file, client_context
from protocol.messages import CurrAmt
from setpay.config import Settings, load
from tests.fixtures_ca import files_bytes
from tests.ops.environments import Env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI_USER, CLI_PASS = "cli-carol", "carol's passphrase, test only"
SHOP_USER, SHOP_PASS = "shop-a-clerk", "clerk passphrase, test only"
VICTIM, VICTIM_PASS = "victim-vic", "vic's real passphrase"
SECRETS = (PASSPHRASE, OPERATOR_PASSPHRASE, CLI_PASS, SHOP_PASS, VICTIM_PASS)
TOKENS: list[str] = []  # every bearer token the tests were given (none may be stored)


@pytest.fixture
def env(web_env: Env) -> Env:
    return web_env


def settings_of(env: Env) -> Settings:
    return load(env.vars)


def wallet_api(env: Env) -> HttpApi:
    s = settings_of(env)
    return HttpApi(service_url(s, "wallet"), ca_file(s))


def browser(env: Env) -> aiohttp.ClientSession:
    """A client that keeps cookies like a browser (also for an IP host)."""
    context = client_context(ca_file(settings_of(env)))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                 cookie_jar=aiohttp.CookieJar(unsafe=True))  # fmt: skip


def _cli(env: Env, *args: str, **secrets: str) -> Any:
    proc = Env.of({**env.vars, **secrets}).setpay(*args, "--json", timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_operator_and_cardholder_clis_over_https(env: Env) -> None:
    add = Env.of({**env.vars, "SETPAY_POS_PASSPHRASE": SHOP_PASS}).setpay(
        "pos", "operator", "add", "--user", SHOP_USER, "--merchant", "M-1001")
    assert add.returncode == 0, add.stderr
    shop = {"SETPAY_POS_PASSPHRASE": SHOP_PASS}
    order = _cli(env, "pos", "order", "--user", SHOP_USER, "--description", "CLI order",
                 "--amount", "1234", **shop)  # fmt: skip
    assert order["merchant_id"] == "M-1001" and order["state"] == "awaiting payment"
    cardholder = {"SETPAY_WALLET_PASSPHRASE": CLI_PASS, "SETPAY_WALLET_PAN": LOAD_PANS[1]}
    _cli(env, "wallet", "register", "--user", CLI_USER, **cardholder)
    from datetime import UTC, datetime

    card = _cli(env, "wallet", "enroll", "--user", CLI_USER, "--brand", "alpha",
                "--expiry", _valid(datetime.now(UTC)), "--field", "name=Carol Cli",
                "--field", "postal_code=100-0001", **cardholder)  # fmt: skip
    cards = _cli(env, "wallet", "cards", "--user", CLI_USER, **cardholder)
    assert [c["card_id"] for c in cards] == [card["card_id"]]
    assert cards[0]["hint"] == LOAD_PANS[1][-4:]
    paid = _cli(env, "wallet", "buy", "--user", CLI_USER, "--card", card["card_id"],
                "--pay-link", order["pay_link"], **cardholder)  # fmt: skip
    assert paid["outcome"] == APPROVED
    listed = _cli(env, "pos", "orders", "--user", SHOP_USER, **shop)
    mine = [o for o in listed if o["order"] == order["order"]]
    assert mine and mine[0]["state"] == APPROVED and mine[0]["xid"] == paid["xid"]
    # A wrong passphrase is one readable line and a non-zero exit, not a traceback.
    bad = Env.of({**env.vars, "SETPAY_POS_PASSPHRASE": "not it at all"}).setpay(
        "pos", "orders", "--user", SHOP_USER)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert LOGIN_FAILED in bad.stderr


async def test_an_operator_cannot_see_or_act_on_another_merchants_orders(env: Env) -> None:
    pos = PosClient.for_settings(settings_of(env))
    try:
        a = await pos.login(operator_name("M-1001"), OPERATOR_PASSPHRASE)
        b = await pos.login(operator_name("M-1002"), OPERATOR_PASSPHRASE)
        theirs = await b.create_order("B's order", CurrAmt("JPY", 999))
        assert theirs.merchant_id == "M-1002"
        with pytest.raises(MerchantError, match="no such order") as seen:
            await a.order(theirs.order)
        with pytest.raises(MerchantError, match="no such order") as nothing:
            await a.order("00" * 20)
        assert str(seen.value) == str(nothing.value)  # no oracle either
        assert theirs.order not in {o.order for o in await a.orders()}
        assert all(o.merchant_id == "M-1001" for o in await a.orders())
        # The merchant is the session's, never a request field.
        with pytest.raises(ApiError) as forced:
            await pos.http.call("POST", "/api/orders", {
                "description": "as B", "currency": "JPY", "amount": 5, "merchant_id": "M-1002",
            }, token=a.token)  # fmt: skip
        assert forced.value.status == 400
        assert (await b.order(theirs.order)).order == theirs.order
    finally:
        await pos.close()


async def test_my_session_cannot_reach_another_cardholders_card(env: Env) -> None:
    wallet, shop = demo_cases.connect_clients(settings_of(env))
    try:
        alice = demo_cases.Shopper(wallet, "demo-alice", LOAD_PANS[0])
        bob = demo_cases.Shopper(wallet, "demo-bob", "4000000000000002")
        await alice.card()
        await bob.card()
        paid = await alice.buy(shop, "M-1001", 1_000)
        assert paid.describe() == APPROVED
        bob_s = await bob.session()
        assert alice.card_id not in {c.card_id for c in await bob_s.cards()}
        order = await shop.create_order("M-1001", "with alice's card", CurrAmt("JPY", 500))
        with pytest.raises(WalletError, match="no such card"):
            await bob_s.start_purchase(card_id=alice.card_id, offer=order.offer)
        with pytest.raises(WalletError, match="no such purchase"):
            await bob_s.inquire(paid.xid)
        TOKENS.append((await alice.session()).token.bearer)
    finally:
        await demo_cases.close_clients(wallet, shop)


async def test_a_session_cookie_without_the_csrf_token_changes_nothing(env: Env) -> None:
    url = service_url(settings_of(env), "wallet")
    async with browser(env) as b:
        async with b.post(f"{url}/api/login",
                          json={"user": "demo-alice", "passphrase": PASSPHRASE}) as r:
            assert r.status == 200
            csrf = (await r.json())["csrf"]
        async with b.get(f"{url}/api/cards") as r:
            before = (await r.json())["cards"]
        enrol = {"brand": "alpha", "number": LOAD_PANS[2], "expiry": "9912"}
        async with b.post(f"{url}/api/cards", json=enrol) as r:
            assert r.status == 403
        async with b.post(f"{url}/api/cards", json=enrol, headers={
                "X-CSRF-Token": csrf, "Origin": "https://shop.example"}) as r:
            assert r.status == 403
        async with b.post(f"{url}/api/logout") as r:
            assert r.status == 403  # logging a victim out is a state change too
        async with b.get(f"{url}/api/cards") as r:
            assert (await r.json())["cards"] == before


async def test_guessing_a_passphrase_locks_the_account(env: Env) -> None:
    wallet = WalletClient.for_settings(settings_of(env))
    try:
        await wallet.register(VICTIM, VICTIM_PASS)
        for guess in range(settings_of(env).web_max_failures):
            with pytest.raises(WalletError) as wrong:
                await wallet.login(VICTIM, f"guess number {guess}")
            assert str(wrong.value) == LOGIN_FAILED
        with pytest.raises(WalletError) as locked:
            await wallet.login(VICTIM, VICTIM_PASS)
        assert str(locked.value) == LOCKED
    finally:
        await wallet.close()


async def test_unknown_and_known_names_answer_alike(env: Env) -> None:
    http = wallet_api(env)
    try:
        known: list[float] = []
        unknown: list[float] = []
        answers = set()
        for i in range(4):  # below the lockout; alternated so load hits both alike
            for user, out in (("demo-carol", known), (f"nobody-{i}", unknown)):
                began = time.perf_counter()
                with pytest.raises(ApiError) as refused:
                    await http.login(user, "not the passphrase")
                out.append(time.perf_counter() - began)
                answers.add((refused.value.status, refused.value.text))
        assert answers == {(401, LOGIN_FAILED)}
        k, u = statistics.median(known), statistics.median(unknown)
        assert abs(k - u) / max(k, u) < 0.5, (k, u)  # both one scrypt (tests/web: 25 %)
        token = await http.login("demo-carol", PASSPHRASE)  # the right one still opens
        TOKENS.append(token.bearer)
    finally:
        await http.close()


async def test_each_service_serves_its_openapi_and_its_page(env: Env) -> None:
    settings = settings_of(env)
    wanted = {"wallet": {"/api/register", "/api/cards", "/api/purchases",
                         "/api/purchases/{purchase_id}/finish", "/api/inquiries"},
              "pos": {"/api/orders", "/api/orders/{order}"}}  # fmt: skip
    async with browser(env) as b:
        for service, paths in wanted.items():
            url = service_url(settings, service)
            async with b.get(f"{url}/openapi.json") as r:
                doc = await r.json()
            assert paths | {"/api/login", "/api/logout", "/api/session"} <= set(doc["paths"])
            if service == "wallet":  # the one costly anonymous call is limited per address
                limit = settings.web_source_registrations
                assert doc["paths"]["/api/register"]["post"]["description"].startswith(
                    f"At most {limit} calls per client address")
            async with b.get(f"{url}/") as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]


def test_no_passphrase_token_pan_or_pin_in_wallet_or_pos_files(env: Env) -> None:
    data = env.data_dir
    blobs = files_bytes(data / "run") + files_bytes(data / "wallet") + files_bytes(
        data / "merchant")
    assert any(b'"http_request"' in blob for blob in blobs)  # the request logs were read
    assert TOKENS
    for blob in blobs:
        for secret in (*SECRETS, *TOKENS):
            assert secret.encode() not in blob
        for number in (*LOAD_PANS[:3], DEBIT_NUMBER):
            assert number.encode() not in blob
    wallet_and_pos = files_bytes(data / "wallet") + files_bytes(data / "merchant")
    for blob in wallet_and_pos:
        for pin in (DEBIT_PIN, WRONG_PIN):
            assert pin.encode() not in blob


