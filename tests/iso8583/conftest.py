"""Fixtures: the link's counterpart is the real issuer host, so these tests reuse the issuer
tests' seeded store, soft security module and host on a free port (tests/issuer/conftest.py)
rather than a second definition of them."""

from tests.issuer.conftest import accounts, host, security, store

__all__ = ["accounts", "host", "security", "store"]
