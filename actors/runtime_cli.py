"""`setpay run ROLE`, `setpay up`, `setpay down` (to be written)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the actor runtime's subcommands."""
