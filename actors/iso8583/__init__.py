"""ISO 8583 as the card/bank network speaks it: the dialect, framing, response codes, the
zone PIN key conventions and the acquirer-side link with store-and-forward reversals.

Rule 1: this package belongs to no party: the gateway (acquirer side, ``link``) and the
issuer host (``actors.issuer``) both stand on it, and it imports no party package.
Rule 2: no PAN, PIN, PIN block or track data is logged, journalled or put in an error text
(``spec.SENSITIVE_FIELDS``, ``security.mask_account``).
"""
