"""Hosting a merchant: its keys in the token, its two certificates from the CA.

Rule 1: the signature and key-exchange keys are generated inside the token under the POS
identity ``merchant.<instance>`` (labels ``<identity>/<merchant_id>-sig|-kx``); only their
labels and certificates are stored.
Rule 2: the certificates come from the CA through ``protocol.requester.register_entity``,
which checks every answer; the CA's chain, BCI and CRLs are kept to answer PInitReqs.
"""

from __future__ import annotations

from cryptography import x509

from actors.merchant.store import MerchantRow, MerchantStore
from keystore.keyring import KeyRing
from protocol.certs import certificate_der
from protocol.messages import EntityKind, IDData
from protocol.requester import CAClient, register_entity


async def enroll_merchant(
    store: MerchantStore,
    keys: KeyRing,
    ca: CAClient,
    *,
    root: x509.Certificate,
    brand: str,
    merchant_id: str,
    name: str,
    mcc: str,
) -> MerchantRow:
    """Create the merchant's keys, obtain its certificates, store it (Rules 1, 2)."""
    sig = await keys.create(f"{merchant_id}-sig", exchange=False)
    kx = await keys.create(f"{merchant_id}-kx", exchange=True)
    reg = await register_entity(
        ca,
        root=root,
        brand=brand,
        requester=EntityKind.MERCHANT,
        id_data=IDData(merchant_id, None, None),
        sig_key=sig,
        kx_key=kx,
        values={"merchant_id": merchant_id, "merchant_name": name, "mcc": mcc},
    )
    row = MerchantRow(
        merchant_id,
        brand,
        sig.key_id,
        kx.key_id,
        certificate_der(reg.sig_cert),
        certificate_der(reg.kx_cert),
        [certificate_der(c) for c in reg.chain],
        certificate_der(root),
        reg.ca.bci,
        list(reg.ca.crls),
    )
    store.save_merchant(row, ca.clock.now_ms())
    return row
