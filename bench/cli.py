"""`setpay` subcommands of the bench layer."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this layer's subcommands to the `setpay` parser."""
