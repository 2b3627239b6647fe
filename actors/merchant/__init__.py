"""The server-managed POS: one service hosts the POS of many merchants."""

from actors.merchant.actor import main

__all__ = ["main"]
