"""The one exception base of the merchant POS service.

Rule 1: protocol failures stay ``ProtocolError`` (they become SET Error replies); this base is
for what an operator or a caller of the Python API did wrong (unknown merchant, no gateway).
"""

from __future__ import annotations


class MerchantError(Exception):
    """A merchant POS request cannot be served; the message says which and why."""
