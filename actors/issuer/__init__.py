"""The issuer/acquirer host (ISO 8583 over TCP) and the gateway-side link to it.

Rule 1: the host is the "existing financial network": it speaks ISO 8583 only, never SET.
Rule 2: no PAN, PIN, PIN block or track data is stored, logged or put in an error text;
accounts are found by a keyed hash of the account (``IssuerSecurity.pan_index``).
"""
