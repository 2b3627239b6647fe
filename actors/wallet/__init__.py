"""The server-managed wallet: one service hosts the wallets of many cardholders."""

from actors.wallet.actor import main

__all__ = ["main"]
