"""``setpay issuer`` commands and the environment seeding they use."""

from __future__ import annotations

import argparse
import dataclasses
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.issuer import cli
from actors.issuer.accounts import Store
from actors.issuer.errors import SecurityUnavailable
from actors.issuer.seed import seed_environment
from setpay.cli import CommandError
from setpay.config import Settings
from tests.issuer.softsecurity import SoftIssuerSecurity


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="setpay")
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


async def test_echo_command_against_a_running_host(host) -> None:
    args = parse(["issuer", "echo", "--port", str(host.port)])
    code = await cli.echo(args.port)
    assert code.approved
    assert host.handled == 1


def test_echo_command_without_a_host_is_a_command_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = parse(["issuer", "echo", "--port", str(port)])
    with pytest.raises(CommandError, match=f"no echo from 127.0.0.1:{port}"):
        args.func(args, Settings())


class NoPvvSecurity(SoftIssuerSecurity):
    """A security module that indexes PANs but cannot compute PVVs (today's keystore)."""

    async def pvv(self, account: str, pin_block_under_zpk: bytes) -> bytes:
        raise SecurityUnavailable("no pin_pvv operation")


@pytest.mark.parametrize("kind", ["full", "no-pin-source", "no-pvv"])
async def test_seed_environment_reports_each_account(tmp_path: Path, kind: str) -> None:
    """Every account is created when PVVs can be made; otherwise the PIN accounts are
    skipped with the reason and the cards are still created."""
    security = SoftIssuerSecurity() if kind != "no-pvv" else NoPvvSecurity()
    pin_source = None if kind == "no-pin-source" else security.pin_block
    store = Store(tmp_path / "seed.sqlite")
    try:
        report = await seed_environment(store, security, datetime.now(UTC), pin_source)
        for account, status in report:
            exists = store.account(await security.pan_index(account.reference)) is not None
            if account.pin is None or kind == "full":
                assert status == "created" and exists, account.name
            else:
                assert status.startswith("skipped") and not exists, account.name
        assert {a.brand for a, s in report if s == "created"} >= {"visa", "mastercard"}
    finally:
        store.close()


async def test_seeding_again_keeps_each_pin_and_resets_the_rest(tmp_path: Path) -> None:
    """An environment brought up again seeds its accounts again: balances go back to the
    seed's, but a PIN account's PVV is kept, not issued again (the keystore allows three PIN
    issuances per account an hour, so the fourth bring-up of an hour used to fail)."""
    security = SoftIssuerSecurity()
    issued: list[str] = []

    async def pvv_for(number: str, pin: str) -> bytes:
        issued.append(number)
        return await security.pvv(number, await security.pin_block(number, pin))

    store = Store(tmp_path / "seed.sqlite")
    try:
        first = await seed_environment(store, security, datetime.now(UTC), pvv_for=pvv_for)
        pin_accounts = [a for a, status in first if a.pin is not None and status == "created"]
        assert pin_accounts and len(issued) == len(pin_accounts)
        index = await security.pan_index(pin_accounts[0].reference)
        held = store.account(index)
        assert held is not None and held.pvv
        store.put_account(dataclasses.replace(held, balance=held.balance - 1234))
        for _ in range(3):
            again = await seed_environment(store, security, datetime.now(UTC), pvv_for=pvv_for)
            assert [s for _, s in again] == [s for _, s in first]
        assert len(issued) == len(pin_accounts)  # each PIN issued once, in the first seed
        reseeded = store.account(index)
        assert reseeded is not None
        assert reseeded.pvv == held.pvv and reseeded.balance == held.balance
    finally:
        store.close()
