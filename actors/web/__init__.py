"""The HTTPS front door the thin clients reach (wallet and POS): TLS, sessions, CSRF,
lockout, security headers, OpenAPI, and the HTTPS client of the CLIs, demo and bench.

A shared layer beside the parties (like ``actors/iso8583``): the wallet and merchant parties
import it; it imports no party.
"""
