"""The issuer/acquirer host: accounts, seed data, decision rules, its process and CLI.

Rule 1: the host is the "existing financial network": it speaks ISO 8583 only
(``actors.iso8583``, shared with the gateway's link), never SET, and imports no other party.
Rule 2: no PAN, PIN, PIN block or track data is stored, logged or put in an error text;
accounts are found by a keyed hash of the account (``IssuerSecurity.pan_index``).
"""
