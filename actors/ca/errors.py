"""The one exception base of the CA package (operator-side failures).

Rule 1: protocol failures of a request are ``protocol.errors.ProtocolError`` (they become SET
Error replies); ``CAError`` is for the CA's own operations: init, issue, revoke, export.
Rule 2: texts name the object and the check, never a PAN, secret or key material.
"""

from __future__ import annotations


class CAError(Exception):
    """A CA operation cannot be done (unknown CA, serial, brand, or the hierarchy is missing)."""
