"""Fixtures: a seeded issuer store in tmp, a host on a free 127.0.0.1 port, a raw client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.iso8583 import framing, spec
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from actors.issuer.seed import SeedAccount, environment_accounts, seed
from tests.issuer.softsecurity import SoftIssuerSecurity

NOW = datetime.now(UTC)


class RawClient:
    """One TCP connection; sends a message and reads the next frame (sequential use)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send_raw(self, payload: bytes) -> bytes | None:
        framing.write_frame(self.writer, payload)
        await self.writer.drain()
        return await asyncio.wait_for(framing.read_frame(self.reader), 5)

    async def request(self, message: spec.Message) -> spec.Message:
        raw = await self.send_raw(spec.pack(message))
        assert raw is not None, "host closed the connection"
        return spec.unpack(raw)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


_stan = 0


def next_stan() -> str:
    global _stan
    _stan += 1
    return f"{_stan % 1_000_000:06d}"


def request(
    account: SeedAccount | str,
    amount: int,
    *,
    mti: str = spec.AUTH_REQUEST,
    stan: str | None = None,
    f7: str = "1124120000",
    pin_block: bytes | None = None,
) -> spec.Message:
    """An 0100/0200 for ``account`` (a seed account, or a bare PAN)."""
    stan = stan or next_stan()
    message: spec.Message = {
        "t": mti,
        "3": spec.CARD_PROCESSING,
        "4": f"{amount:012d}",
        "7": f7,
        "11": stan,
        "32": "4321",
        "37": f"RRN{stan}XYZ",
        "41": "TERM0001",
        "42": "MERCHANT0000001",
        "49": "392",
    }
    reference = account if isinstance(account, str) else account.reference
    if isinstance(account, SeedAccount) and account.kind == "bank":
        message["3"] = spec.DEBIT_PROCESSING
        message["102"] = reference
    else:
        message["2"] = reference
    if pin_block is not None:
        message["52"] = spec.pin_block_field(pin_block)
    return message


@pytest.fixture
def accounts() -> dict[str, SeedAccount]:
    return {a.name: a for a in environment_accounts(NOW)}


@pytest.fixture
def security() -> SoftIssuerSecurity:
    return SoftIssuerSecurity()


@pytest.fixture
async def store(
    tmp_path: Path, security: SoftIssuerSecurity, accounts: dict[str, SeedAccount]
) -> AsyncIterator[Store]:
    s = Store(tmp_path / "issuer.sqlite")
    await seed(s, security, list(accounts.values()), security.pin_block)
    yield s
    s.close()


@pytest.fixture
async def host(store: Store, security: SoftIssuerSecurity) -> AsyncIterator[IssuerHost]:
    h = IssuerHost(store, security)
    await h.start()
    yield h
    await h.stop()


@pytest.fixture
async def client(host: IssuerHost) -> AsyncIterator[RawClient]:
    c = await RawClient.connect(host.port)
    yield c
    await c.close()
