"""The front door over real TLS: sessions (bearer and cookie), CSRF and Origin, lockout per
name and per source, expiry and logout, headers, limits and the OpenAPI document."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from typing import Any

import pytest

from actors.web.client import ApiError, HttpApi
from actors.web.server import LOCKED, LOGIN_FAILED, SECURITY_HEADERS, TOO_MANY
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


async def test_costly_anonymous_work_is_limited_per_source(make_door: Any) -> None:
    """The wallet's register is such a route (wallet/api.py); the door's own is the same rule."""
    door = await make_door(web_source_registrations=3, web_lockout_seconds=60)
    async with door.client() as browser:

        async def signup(what: str) -> tuple[int, dict[str, Any]]:
            async with browser.post(f"{door.url}/api/signup", json={"what": what}) as r:
                return r.status, await r.json()

        assert await signup("a0") == (200, {"done": "a0"})
        for _ in range(3):
            assert await signup("taken") == (422, {"error": "taken"})  # refused: not counted
        assert [await signup(f"a{i}") for i in (1, 2)] == [(200, {"done": f"a{i}"}) for i in (1, 2)]
        assert await signup("a3") == (429, {"error": TOO_MANY})
        assert await signup("taken") == (429, {"error": TOO_MANY})  # before any work
        assert door.effects == ["signup:a0", "signup:a1", "signup:a2"]
        # other routes from the same address are not limited by it
        async with browser.get(f"{door.url}/healthz") as r:
            assert r.status == 200
        async with browser.get(f"{door.url}/openapi.json") as r:
            op = (await r.json())["paths"]["/api/signup"]["post"]
            assert "At most 3 calls per client address" in op["description"]


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


async def _failed_login(browser: Any, url: str, user: str) -> tuple[float, tuple[Any, ...]]:
    """Seconds one failed login took, and everything of its answer but the date."""
    began = time.perf_counter()
    async with browser.post(f"{url}/api/login",
                            json={"user": user, "passphrase": "not the passphrase"}) as r:
        body = await r.read()
        answer = (r.status, body, sorted((k, v) for k, v in r.headers.items() if k != "Date"))
    return time.perf_counter() - began, answer


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation with tie
    correction): how likely samples this far apart are if both come from one distribution."""
    ranked = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(ranked)
    i, ties = 0, 0.0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        ties += (j - i + 1) ** 3 - (j - i + 1)
        i = j + 1
    n1, n2 = len(a), len(b)
    r1 = sum(r for r, (_, group) in zip(ranks, ranked, strict=True) if group == 0)
    u = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    z = (abs(u - n1 * n2 / 2) - 0.5) / sigma
    return math.erfc(max(z, 0.0) / math.sqrt(2))


def test_the_rank_test_tells_different_timings_apart() -> None:
    """The test below could fail: the rank test sees a 10 % shift among 10 % noise."""
    rng = random.Random(7)
    same = [rng.gauss(1.0, 0.1) for _ in range(60)], [rng.gauss(1.0, 0.1) for _ in range(60)]
    assert mann_whitney_p(*same) > 0.01
    shifted = [rng.gauss(1.0, 0.1) for _ in range(60)], [rng.gauss(1.1, 0.1) for _ in range(60)]
    assert mann_whitney_p(*shifted) < 0.001


async def test_unknown_user_and_wrong_passphrase_are_indistinguishable(make_door: Any) -> None:
    """Same answer byte for byte (but its date), and timings from one distribution: over 60
    tries each, interleaved in alternating order so load on the machine hits both alike, a
    Mann-Whitney rank test finds no difference (p > 0.001); both cost a scrypt."""
    door = await make_door(web_max_failures=10_000, web_source_failures=10_000)
    known: list[float] = []
    unknown: list[float] = []
    answers: set[tuple[Any, ...]] = set()
    async with door.client() as browser:
        await _failed_login(browser, door.url, "warm-up")
        for i in range(60):
            order = [(ALICE, known), (f"nobody-{i}", unknown)]
            for user, times in order if i % 2 else reversed(order):
                took, answer = await _failed_login(browser, door.url, user)
                times.append(took)
                answers.add(repr(answer))  # type: ignore[arg-type]
        began = time.perf_counter()
        async with browser.post(f"{door.url}/api/login",
                                json={"user": ALICE, "passphrase": PASS}) as r:
            assert r.status == 200
        scrypt_s = time.perf_counter() - began
    assert len(answers) == 1, answers  # one answer for both
    p = mann_whitney_p(known, unknown)
    k, u = statistics.median(known), statistics.median(unknown)
    assert p > 0.001, (p, k, u)
    assert min(k, u) > 0.5 * scrypt_s, (k, u, scrypt_s)  # neither is a fast path


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
