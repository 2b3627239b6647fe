"""The certificate authority actor: hierarchy, registration, issuance, renewal, revocation."""

from actors.ca.actor import main

__all__ = ["main"]
