"""The payment gateway role: AuthReq in, ISO 8583 to the issuer host, AuthRes out."""

from actors.gateway.actor import main

__all__ = ["main"]
