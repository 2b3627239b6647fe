"""`setpay` subcommands of the actors layer: running actors and the parties' commands.

The demo is registered by the top (``cli.main``): nothing below it imports the demo."""

from __future__ import annotations

import argparse

from actors import ledgers, runtime_cli, snapshot
from actors.ca import cli as ca_cli
from actors.gateway import cli as gateway_cli
from actors.issuer import cli as issuer_cli
from actors.merchant import cli as merchant_cli
from actors.wallet import cli as wallet_cli


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``setpay run|up|down|snapshot|ledgers``, ``setpay ca|gateway|issuer|pos|wallet …``."""
    runtime_cli.register(sub)
    snapshot.register(sub)
    ledgers.register(sub)
    ca_cli.register(sub)
    gateway_cli.register(sub)
    issuer_cli.register(sub)
    merchant_cli.register(sub)
    wallet_cli.register(sub)
