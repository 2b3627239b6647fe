"""The browser tests' Chromium trusts exactly the test CA it is given (tests/web/chromium.py):
a page under that CA loads with its padlock, a page under another CA is refused."""

from __future__ import annotations

from typing import Any

import pytest

from actors.web.tls import ca_file
from tests.web.chromium import launch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAGE = "/healthz"


async def test_a_page_under_the_trusted_ca_loads(make_door: Any) -> None:
    from playwright.async_api import async_playwright

    door = await make_door()
    async with async_playwright() as p:
        browser = await launch(p, ca_file(door.settings))
        try:
            page = await (await browser.new_context()).new_page()
            response = await page.goto(door.url + PAGE)
            assert response is not None and response.ok
            security = await response.security_details()
            assert security is not None and security.get("protocol", "").startswith("TLS")
        finally:
            await browser.close()


async def test_a_page_under_another_ca_is_refused(make_door: Any) -> None:
    from playwright.async_api import Error, async_playwright

    trusted, other = await make_door(), await make_door()  # each made its own test CA
    assert ca_file(trusted.settings).read_bytes() != ca_file(other.settings).read_bytes()
    async with async_playwright() as p:
        browser = await launch(p, ca_file(trusted.settings))
        try:
            context = await browser.new_context()
            page = await context.new_page()
            with pytest.raises(Error, match="ERR_CERT"):
                await page.goto(other.url + PAGE)
            # the same browser still opens the trusted one (a page of its own: the refused
            # one is busy showing its error page)
            assert (await (await context.new_page()).goto(trusted.url + PAGE)).ok  # type: ignore[union-attr]
        finally:
            await browser.close()
