"""What every layer's command module shares; the ``setpay`` command itself is ``cli.main``.

A command module exposes ``register(subparsers)``; each parser it adds sets
``func(args, settings) -> int``. This module is ground (keystore/ and broker/ import it), so
it holds only the contract, never the entry point that imports the layers.
"""

from __future__ import annotations


class CommandError(Exception):
    """A command failed for a reason the user can act on; the message says which."""
