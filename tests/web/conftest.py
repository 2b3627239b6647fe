"""A front door (actors/web/server.py) on a real TLS listener and a real store, with real
scrypt accounts: what the wallet and the POS stand on, without the rest of a party."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from actors.web import tls
from actors.web.passwords import new_passphrase_record
from actors.web.server import FrontDoor
from actors.web.sessions import SESSIONS, SessionStore
from setpay.config import Settings
from setpay.store import open_store

ALICE, BOB = "alice", "bob"
PASS = "correct horse battery"
BOB_PASS = "bob's own passphrase"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Door:
    def __init__(self, door: FrontDoor, settings: Settings) -> None:
        self.door = door
        self.settings = settings
        self.url = f"https://127.0.0.1:{door.port}"
        self.context = tls.client_context(tls.ca_file(settings))

    def client(self) -> aiohttp.ClientSession:
        """A browser-like client: keeps cookies (also for an IP host)."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.context),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )


async def start_door(tmp_path: Path, pages: dict[str, Path] | None = None,
                     name: str = "test", **knobs: Any) -> Door:
    settings = Settings(data_dir=tmp_path, wallet_web_port=free_port(), **knobs)
    tls.ensure_test_certificate(settings)
    db = open_store(tmp_path / "front.sqlite", [SESSIONS])
    accounts = {ALICE: (new_passphrase_record(PASS), "scope-a"),
                BOB: (new_passphrase_record(BOB_PASS), "scope-b")}  # fmt: skip
    sessions = SessionStore(db, lifetime_s=settings.web_session_seconds,
                            max_failures=settings.web_max_failures,
                            lockout_s=settings.web_lockout_seconds)  # fmt: skip
    door = FrontDoor(settings, name=name, title="test door",
                     port=settings.wallet_web_port, refusals=(ValueError,),
                     sessions=sessions, lookup=accounts.get, pages=pages)  # fmt: skip
    effects: list[str] = []

    @door.route("POST", "/api/signup", "costly work before any login", auth=False,
                per_source=settings.web_source_registrations, body={
        "type": "object", "properties": {"what": {"type": "string", "maxLength": 16}},
        "required": ["what"]})  # fmt: skip
    async def signup(_r: Any, _s: Any, b: dict[str, Any]) -> Any:
        if b["what"] == "taken":
            raise ValueError("taken")  # a cheap refusal: not counted (server.py Rule 2b)
        effects.append(f"signup:{b['what']}")
        return {"done": b["what"]}

    @door.route("POST", "/api/effect", "a state change", body={
        "type": "object", "properties": {"what": {"type": "string", "maxLength": 16}},
        "required": ["what"]})  # fmt: skip
    async def effect(_r: Any, s: Any, b: dict[str, Any]) -> Any:
        effects.append(f"{s.principal}:{b['what']}")
        return {"done": b["what"], "scope": s.scope}

    await door.start()
    d = Door(door, settings)
    d.effects = effects  # type: ignore[attr-defined]
    d.db = db  # type: ignore[attr-defined]
    return d


@pytest.fixture
async def make_door(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    doors: list[Door] = []

    async def make(**knobs: Any) -> Door:
        door = await start_door(tmp_path / f"d{len(doors)}", **knobs)
        doors.append(door)
        return door

    yield make
    for d in doors:
        await d.door.stop()
        d.db.close()  # type: ignore[attr-defined]


