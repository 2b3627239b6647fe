"""The web wallet and the POS console in real headless Chromium (Debian's, driven by
Playwright) against a live environment (tests/fixtures_web.py): an operator creates orders
on the console and hands out pay links; a cardholder registers, enrols a card and an OPE
bank account on the wallet page, pays by card, and pays from the PIN account with the PIN
typed into the page (sealed there with WebCrypto, opened by the gateway's keystore); the
console then shows every order's state. The wallet page's whole transfer (HTML, script,
style) is measured and must stay within 50 KB. Screenshots of both pages are written to
``$SETPAY_SCREENSHOTS`` (default: the test's temporary directory)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from actors.demo_cases import APPROVED, DECLINED, SALE_APPROVED
from actors.environment import (
    LOAD_DEBIT_PIN,
    LOAD_DEBIT_REFERENCE,
    LOAD_PANS,
    OPERATOR_PASSPHRASE,
    _valid,
    operator_name,
)
from actors.web.client import service_url
from actors.web.tls import ca_file
from protocol.messages import CurrAmt
from setpay.config import load
from tests.ops.environments import Env
from tests.web.chromium import launch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAGE_BUDGET = 50 * 1024
USER, PASS = "web-wendy", "wendy's web passphrase"


@pytest.fixture
async def browser(web_env: Env) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        # trusts the environment's test CA and nothing else (tests/web/chromium.py)
        chromium = await launch(p, ca_file(load(web_env.vars)))
        context = await chromium.new_context(viewport={"width": 900, "height": 1000})
        yield context
        await chromium.close()


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SETPAY_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def transferred(page: Any, url: str) -> int:
    """Bytes the page's load moved (headers and bodies of every response)."""
    responses: list[Any] = []

    def seen(response: Any) -> None:
        responses.append(response)

    page.on("response", seen)
    await page.goto(url, wait_until="networkidle")
    page.remove_listener("response", seen)
    assert {r.url.rsplit("/", 1)[-1].split("#")[0] for r in responses} >= {
        "", "wallet.js", "wallet.css"}  # the page, its script and its style were counted
    total = 0
    for r in responses:
        sizes = await r.request.sizes()
        total += sizes["responseBodySize"] + sizes["responseHeadersSize"]
    return total


async def new_order(pos: Any, description: str, amount: int, *, sale: bool) -> str:
    await pos.fill("#order-form input[name=description]", description)
    await pos.fill("#order-form input[name=amount]", str(amount))
    if sale:
        await pos.check("#order-form input[name=sale]")
    else:
        await pos.uncheck("#order-form input[name=sale]")
    before = await pos.get_attribute("#pay-link", "href")
    await pos.click("#order-form button[type=submit]")
    await pos.wait_for_function(
        "(b) => document.getElementById('pay-link').getAttribute('href') !== b", arg=before)
    return str(await pos.get_attribute("#pay-link", "href"))


async def pay(wallet: Any, link: str, card_hint: str, pin: str | None = None) -> str:
    await wallet.fill("#link-form input[name=link]", link)
    await wallet.click("#link-form button[type=submit]")
    await wallet.wait_for_selector("#pay:not([hidden])")
    label = await wallet.eval_on_selector(
        "#pay-card", "(s, h) => [...s.options].find(o => o.text.endsWith(h)).value", card_hint)
    await wallet.select_option("#pay-card", label)
    if pin is not None:
        await wallet.wait_for_selector("#pin-row", state="visible")
        await wallet.fill("#pay-form input[name=pin]", pin)
    else:
        assert not await wallet.is_visible("#pin-row")  # a card asks for no PIN
    await wallet.click("#pay-form button[type=submit]")
    await wallet.wait_for_function(
        "() => { const t = document.getElementById('outcome').textContent;"
        " return t && t !== 'paying…'; }", timeout=120_000)
    return str(await wallet.text_content("#outcome"))


async def test_console_and_wallet_pages_end_to_end(web_env: Env, browser: Any,
                                                   tmp_path: Path) -> None:
    settings = load(web_env.vars)
    out = shots(tmp_path)
    pos = await browser.new_page()
    await pos.goto(service_url(settings, "pos") + "/")
    await pos.fill("#login-form input[name=user]", operator_name("M-1003"))
    await pos.fill("#login-form input[name=passphrase]", OPERATOR_PASSPHRASE)
    await pos.click("#login-form button[type=submit]")
    await pos.wait_for_selector("#app:not([hidden])")
    card_link = await new_order(pos, "Blue notebook", 2_400, sale=False)
    debit_link = await new_order(pos, "Coffee beans", 1_800, sale=True)
    wrong_link = await new_order(pos, "Coffee mug", 900, sale=True)
    assert card_link.startswith(service_url(settings, "wallet") + "/#pay=")

    wallet = await browser.new_page()
    size = await transferred(wallet, card_link)
    assert size <= PAGE_BUDGET, f"the wallet page moved {size} bytes"
    await wallet.fill("#login-form input[name=user]", USER)
    await wallet.fill("#login-form input[name=passphrase]", PASS)
    await wallet.click("#register")
    await wallet.wait_for_selector("#pay:not([hidden])")
    # The pay link it was opened with is shown at once: merchant, description, amount.
    assert "Blue notebook" in await wallet.text_content("#order")
    assert "2400 JPY" in await wallet.text_content("#order")
    expiry = _valid(datetime.now(UTC))
    bank, branch, number = LOAD_DEBIT_REFERENCE.split("-")
    for fields, pin_account in (({"number": LOAD_PANS[3]}, False),
                                ({"number": number, "bank_code": bank, "branch": branch}, True)):
        await wallet.fill("#enrol-form input[name=expiry]", expiry)
        await wallet.fill("#enrol-form input[name=name]", "Wendy Web")
        await wallet.fill("#enrol-form input[name=postal_code]", "100-0001")
        await wallet.fill("#enrol-form input[name=bank_code]", fields.get("bank_code", ""))
        await wallet.fill("#enrol-form input[name=branch]", fields.get("branch", ""))
        await wallet.fill("#enrol-form input[name=number]", fields["number"])
        await wallet.set_checked("#enrol-form input[name=pin_account]", pin_account)
        count = await wallet.locator("#cards li").count()
        await wallet.click("#enrol-form button[type=submit]")
        await wallet.wait_for_function(
            "(n) => document.querySelectorAll('#cards li').length > n", arg=count,
            timeout=120_000)  # fmt: skip
    cards = await wallet.locator("#cards li").all_text_contents()
    assert any(c.endswith(LOAD_PANS[3][-4:]) for c in cards)
    assert any(number[-4:] in c and "PIN account" in c for c in cards)
    assert await pay(wallet, card_link, LOAD_PANS[3][-4:]) == APPROVED
    await wallet.screenshot(path=str(out / "wallet.png"), full_page=True)
    assert await pay(wallet, debit_link, number[-4:], LOAD_DEBIT_PIN) == SALE_APPROVED
    assert await pay(wallet, wrong_link, number[-4:], "99999999") == DECLINED
    assert await wallet.input_value("#pay-form input[name=pin]") == ""  # not kept

    await pos.click("#refresh")
    await pos.wait_for_function(
        "() => [...document.querySelectorAll('#orders td.state')]"
        ".filter(td => td.textContent !== 'awaiting payment').length >= 3")
    states = await pos.locator("#orders td.state").all_text_contents()
    assert {APPROVED, SALE_APPROVED, DECLINED} <= set(states)
    await pos.screenshot(path=str(out / "pos.png"), full_page=True)


async def redrawn(page: Any, order: str, column: str, value: str) -> None:
    """Wait until the transactions list, drawn again, shows ``value`` in ``column`` of
    ``order``'s row."""
    await page.wait_for_function(
        "([order, column, value]) => { const td = document.querySelector("
        "`#transactions tr[data-tx='${order}'] td.${column}`);"
        " return td !== null && td.textContent === value; }",
        arg=[order, column, value],
    )


async def test_console_captures_refunds_and_closes_the_batch(web_env: Env, browser: Any,
                                                             tmp_path: Path) -> None:
    """The console's actions after authorization (actors/merchant/page/pos.js): an order paid
    by a cardholder's thin client is captured in part and refunded in part by clicking on the
    order list, and its batch closed and settled from the batch form."""
    from actors import demo_cases

    settings = load(web_env.vars)
    wallet, shop = demo_cases.connect_clients(settings)
    try:
        shopper = demo_cases.Shopper(wallet, "demo-alice", LOAD_PANS[0])  # the demo's
        await shopper.card()
        order = await shop.create_order("M-1002", "Desk lamp", CurrAmt("JPY", 3_000))
        paid = await (await shopper.session()).buy(card_id=shopper.card_id, offer=order.offer)
        assert paid.describe() == APPROVED
    finally:
        await demo_cases.close_clients(wallet, shop)

    pos = await browser.new_page()
    await pos.goto(service_url(settings, "pos") + "/")
    await pos.fill("#login-form input[name=user]", operator_name("M-1002"))
    await pos.fill("#login-form input[name=passphrase]", OPERATOR_PASSPHRASE)
    await pos.click("#login-form button[type=submit]")
    await pos.wait_for_selector("#app:not([hidden])")
    row = pos.locator(f"#orders tr[data-order='{order.order}']")
    await row.locator("input.amount").fill("1800")
    await row.locator("button[data-act=capture]").click()
    await pos.wait_for_function(
        "() => document.getElementById('msg').textContent.startsWith('Capture: SUCCESS 1800')")
    # The message shows before the lists are drawn again (pos.js ``act``); an amount typed into
    # the old row would be lost with it, so wait until the redraw shows the capture.
    await redrawn(pos, order.order, "captured", "1800")
    row = pos.locator(f"#orders tr[data-order='{order.order}']")
    await row.locator("input.amount").fill("500")
    await row.locator("button[data-act=refund]").click()
    await pos.wait_for_function(
        "() => document.getElementById('msg').textContent.startsWith('Refund: SUCCESS 500')")
    await redrawn(pos, order.order, "credited", "500")
    tx = pos.locator(f"#transactions tr[data-tx='{order.order}']")
    assert await tx.locator("td.captured").text_content() == "1800"
    assert await tx.locator("td.credited").text_content() == "500"
    assert await tx.locator("td.state").text_content() == "credited"
    batch = str(await tx.locator("td.batch").text_content())
    assert batch.isdigit()
    # a refund above what is left is refused by the gateway and shown, nothing changes
    await pos.locator(f"#orders tr[data-order='{order.order}'] input.amount").fill("9999")
    await pos.locator(f"#orders tr[data-order='{order.order}'] button[data-act=refund]").click()
    await pos.wait_for_function(
        "() => document.getElementById('msg').textContent.includes('AMOUNT_EXCEEDED')")
    await pos.fill("#batch-form input[name=batch]", batch)
    await pos.click("#batch-form button[data-op=close]")
    await pos.wait_for_function(
        "(b) => document.getElementById('batch-out').textContent.startsWith("
        "`batch ${b}: SUCCESS`)", arg=batch, timeout=60_000)
    out = str(await pos.text_content("#batch-out"))
    assert "debits" in out and "credits" in out
    await pos.screenshot(path=str(shots(tmp_path) / "pos-after.png"), full_page=True)
