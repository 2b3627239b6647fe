"""The front door over real TLS: sessions (bearer and cookie), CSRF and Origin, lockout per
name and per source, expiry and logout, headers, limits and the OpenAPI document."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import pytest

from actors.web.client import ApiError, HttpApi
from actors.web.server import LOCKED, LOGIN_FAILED, SECURITY_HEADERS
from actors.web.tls import ca_file
from tests.web.conftest import ALICE, BOB, BOB_PASS, PASS


def api(door: Any) -> HttpApi:
    return HttpApi(door.url, ca_file(door.settings), timeout=30)


async def test_bearer_session_acts_for_its_user_until_logout(make_door: Any) -> None:
    door = await make_door()
    http = api(door)
    try:
        token = await http.login(ALICE, PASS)
        assert token.scope == "scope-a"
        me = await http.call("GET", "/api/session", token=token)
        assert me["user"] == ALICE and "token" not in me
        done = await http.call("POST", "/api/effect", {"what": "x"}, token=token)
        assert done == {"done": "x", "scope": "scope-a"}  # no CSRF token needed with a bearer
        await http.logout(token)
        with pytest.raises(ApiError) as ended:
            await http.call("POST", "/api/effect", {"what": "y"}, token=token)
        assert ended.value.status == 401
        assert door.effects == [f"{ALICE}:x"]
    finally:
        await http.close()


async def test_session_expires(make_door: Any) -> None:
    door = await make_door(web_session_seconds=1.0)
    http = api(door)
    try:
        token = await http.login(BOB, BOB_PASS)
        await http.call("GET", "/api/session", token=token)
        await asyncio.sleep(1.3)  # the session's lifetime is the behaviour under test
        with pytest.raises(ApiError) as expired:
            await http.call("GET", "/api/session", token=token)
        assert expired.value.status == 401
    finally:
        await http.close()


async def test_cookie_session_needs_csrf_token_and_own_origin(make_door: Any) -> None:
    door = await make_door()
    async with door.client() as browser:
        async with browser.post(f"{door.url}/api/login",
                                json={"user": ALICE, "passphrase": PASS}) as r:
            assert r.status == 200
            csrf = (await r.json())["csrf"]
            set_cookie = r.headers["Set-Cookie"]
        for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
            assert flag in set_cookie
        assert set_cookie.startswith(f"{door.door.cookie}=")
        async with browser.get(f"{door.url}/api/session") as r:
            assert r.status == 200  # reads need no CSRF token
        url = f"{door.url}/api/effect"
        async with browser.post(url, json={"what": "no-token"}) as r:
            assert r.status == 403
        async with browser.post(url, json={"what": "bad"}, headers={"X-CSRF-Token": "x"}) as r:
            assert r.status == 403
        evil = {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
        async with browser.post(url, json={"what": "xorigin"}, headers=evil) as r:
            assert r.status == 403
        good = {"X-CSRF-Token": csrf, "Origin": door.url}
        async with browser.post(url, json={"what": "ok"}, headers=good) as r:
            assert r.status == 200
        async with browser.post(url, data="what=form", headers={
                "X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert r.status == 415  # a cross-site form cannot send JSON
    assert door.effects == [f"{ALICE}:ok"]


async def test_wrong_passphrases_lock_the_name_known_or_not(make_door: Any) -> None:
    door = await make_door(web_max_failures=3, web_lockout_seconds=60)
    http = api(door)
    try:
        for user in (ALICE, "nobody-here"):
            for _ in range(3):
                with pytest.raises(ApiError) as wrong:
                    await http.login(user, "wrong passphrase")
                assert (wrong.value.status, wrong.value.text) == (401, LOGIN_FAILED)
            with pytest.raises(ApiError) as locked:
                await http.login(user, PASS)  # even the right one, while locked
            assert (locked.value.status, locked.value.text) == (429, LOCKED)
        assert (await http.login(BOB, BOB_PASS)).user == BOB  # another name is not locked
    finally:
        await http.close()


async def test_a_source_with_many_failures_is_refused(make_door: Any) -> None:
    door = await make_door(web_source_failures=4, web_max_failures=100)
    http = api(door)
    try:
        for i in range(4):
            with pytest.raises(ApiError):
                await http.login(f"guess{i}", "wrong passphrase")
        with pytest.raises(ApiError) as refused:
            await http.login(ALICE, PASS)
        assert (refused.value.status, refused.value.text) == (429, LOCKED)
    finally:
        await http.close()


async def test_answers_carry_security_headers_and_limits_hold(make_door: Any) -> None:
    door = await make_door()
    async with door.client() as browser:
        async with browser.get(f"{door.url}/openapi.json") as r:
            doc = await r.json()
            headers = r.headers
        for name, value in SECURITY_HEADERS.items():
            assert headers[name] == value
        assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
        assert doc["openapi"].startswith("3.")
        assert {"/api/login", "/api/logout", "/api/session", "/api/effect"} <= set(doc["paths"])
        assert doc["paths"]["/api/login"]["post"]["security"] == []
        assert doc["paths"]["/api/effect"]["post"]["requestBody"]["content"]
        big = {"user": ALICE, "passphrase": "x" * 70_000}
        async with browser.post(f"{door.url}/api/login", json=big) as r:
            assert r.status == 413
        async with browser.post(f"{door.url}/api/login", json={"user": ALICE, "passphrase": PASS,
                                                                "admin": True}) as r:
            assert r.status == 400 and "unknown field" in (await r.json())["error"]
        async with browser.get(f"{door.url}/api/nothing") as r:
            assert r.status == 404 and "error" in await r.json()
            assert r.headers["X-Frame-Options"] == "DENY"


def _timed_logins(http: HttpApi, user: str, n: int) -> Any:
    async def run() -> list[float]:
        times = []
        for _ in range(n):
            began = time.perf_counter()
            try:
                await http.login(user, "not the passphrase")
            except ApiError as exc:
                assert (exc.status, exc.text) == (401, LOGIN_FAILED)
            times.append(time.perf_counter() - began)
        return times

    return run()


async def test_unknown_user_costs_the_same_as_a_wrong_passphrase(make_door: Any) -> None:
    door = await make_door(web_max_failures=10_000, web_source_failures=10_000)
    http = api(door)
    try:
        known: list[float] = []
        unknown: list[float] = []
        for _ in range(8):  # interleaved, so load on the machine hits both alike
            known += await _timed_logins(http, ALICE, 3)
            unknown += await _timed_logins(http, "no-such-user", 3)
        began = time.perf_counter()
        await http.login(ALICE, PASS)
        scrypt_s = time.perf_counter() - began
        k, u = statistics.median(known), statistics.median(unknown)
        # Both run one scrypt: the medians agree within 25 %, and neither is a fast path.
        assert abs(k - u) / max(k, u) < 0.25, (k, u)
        assert min(k, u) > 0.5 * scrypt_s, (k, u, scrypt_s)
    finally:
        await http.close()


async def test_two_services_on_one_host_keep_their_sessions_apart(make_door: Any) -> None:
    """Browsers send a host's cookies to all its ports: the wallet's and the POS's cookies
    have their own names, and one service's session opens nothing at the other."""
    a, b = await make_door(name="wallet"), await make_door(name="pos")
    a.context.load_verify_locations(str(ca_file(b.settings)))  # each made its own test CA
    async with a.client() as browser:
        for door, user, passphrase in ((a, ALICE, PASS), (b, BOB, BOB_PASS)):
            async with browser.post(f"{door.url}/api/login",
                                    json={"user": user, "passphrase": passphrase}) as r:
                assert r.status == 200
        for door, user in ((a, ALICE), (b, BOB)):  # each still its own after both logins
            async with browser.get(f"{door.url}/api/session") as r:
                assert r.status == 200 and (await r.json())["user"] == user
    async with a.client() as browser:
        async with browser.post(f"{a.url}/api/login",
                                json={"user": ALICE, "passphrase": PASS}) as r:
            token = (await r.json())["token"]
        async with browser.get(f"{b.url}/api/session") as r:
            assert r.status == 401  # the wallet's cookie is not the POS's
        async with browser.get(f"{b.url}/api/session",
                               headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 401  # nor its token
