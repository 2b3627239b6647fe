"""The gateway's one exception base.

Rule 1: ``GatewayError`` is for the operator (no identity, bad configuration, ledger fault);
protocol refusals are ``protocol.errors.ProtocolError`` and become SET Error replies.
"""

from __future__ import annotations

from setpay.lifecycle import NotReady


class GatewayError(Exception):
    """The gateway cannot run or cannot record (configuration, identity, ledger)."""


class IdentityMissing(GatewayError, NotReady):
    """No registered identity (keys + certificates) for this gateway instance."""
