"""Software ``protocol.keys.PrivateKey`` for tests of ``protocol/`` alone.

Only tests (and the bench) use software keys: in the product every private key lives in the
PKCS#11 token. The one implementation is ``protocol.softkey.SoftwareKey``.
"""

from __future__ import annotations

import itertools

from protocol.keys import DEFAULT_SUITE, Suite
from protocol.softkey import RawKey, SoftwareKey

_counter = itertools.count(1)


class SoftKey(SoftwareKey):
    """A software key with a generated label by default."""

    def __init__(self, suite: Suite = DEFAULT_SUITE, label: str | None = None) -> None:
        super().__init__(suite, label or f"soft-{suite.name}-{next(_counter)}")

    @property
    def private_key_for_tests(self) -> RawKey:
        """The raw key, for building fixtures such as self-signed test roots."""
        return self.private_key
