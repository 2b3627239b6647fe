"""The gateway's identity: its two keys in the keystore and the certificates the CA issued.

Rule 1: keys are created inside the token as ``gateway.<instance>/sig`` and ``/kx`` by the
keystore; this module only ever holds their labels and public certificates.
Rule 2: ``register`` obtains the certificates through protocol/requester.py (Me-AqCInit →
CertReq → CertRes, all checked there) and ``save`` writes them, with the trusted root, as
JSON (DER in base64) under ``<data_dir>/gateway/<instance>/identity.json``; the actor refuses
to start without that file (``IdentityMissing``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from actors.gateway.errors import GatewayError, IdentityMissing
from keystore.keyring import KeyRing
from protocol.certs import certificate_der, load_certificate
from protocol.messages import EntityKind, IDData
from protocol.requester import CAClient, register_entity

SIG_NAME = "sig"
KX_NAME = "kx"


def identity_path(data_dir: Path, instance: str) -> Path:
    return data_dir / "gateway" / instance / "identity.json"


def ledger_path(data_dir: Path, instance: str) -> Path:
    return data_dir / "gateway" / instance / "ledger.sqlite"


def journal_path(data_dir: Path, instance: str) -> Path:
    return data_dir / "gateway" / instance / "link.sqlite"


@dataclass(frozen=True)
class GatewayIdentity:
    """Brand, trusted root, signature and key-exchange certificates with their CA chain."""

    brand: str
    root: x509.Certificate
    sig_cert: x509.Certificate
    kx_cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # PCA, Brand
    sig_label: str
    kx_label: str
    # Revocation data the CA handed out at registration: the gateway's cache starts from it.
    bci: bytes | None = None
    crls: tuple[bytes, ...] = ()

    def save(self, path: Path) -> None:
        def b64(c: x509.Certificate) -> str:
            return base64.b64encode(certificate_der(c)).decode("ascii")

        doc = {
            "brand": self.brand,
            "root": b64(self.root),
            "sig_cert": b64(self.sig_cert),
            "kx_cert": b64(self.kx_cert),
            "chain": [b64(c) for c in self.chain],
            "sig_label": self.sig_label,
            "kx_label": self.kx_label,
            "bci": base64.b64encode(self.bci).decode("ascii") if self.bci else None,
            "crls": [base64.b64encode(c).decode("ascii") for c in self.crls],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> GatewayIdentity:
        if not path.exists():
            raise IdentityMissing(
                f"no gateway identity at {path}: run `setpay gateway register` first"
            )
        try:
            doc = json.loads(path.read_text())

            def cert(v: str) -> x509.Certificate:
                return load_certificate(base64.b64decode(v))

            return cls(
                doc["brand"],
                cert(doc["root"]),
                cert(doc["sig_cert"]),
                cert(doc["kx_cert"]),
                tuple(cert(v) for v in doc["chain"]),
                doc["sig_label"],
                doc["kx_label"],
                base64.b64decode(doc["bci"]) if doc.get("bci") else None,
                tuple(base64.b64decode(c) for c in doc.get("crls", [])),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise GatewayError(f"unreadable gateway identity {path}: {exc}") from None


async def register(
    client: CAClient,
    keys: KeyRing,
    *,
    root: x509.Certificate,
    brand: str,
    gateway_id: str,
    acquirer_bin: str,
    currencies: str = "JPY,USD",
    sale: bool = True,
    pin_debit: bool = True,
) -> GatewayIdentity:
    """Create both keys of the ring's suite in the token (or reuse them) and have the CA
    certify them."""
    sig_key = await keys.create(SIG_NAME, exchange=False)
    kx_key = await keys.create(KX_NAME, exchange=True)
    labels = {SIG_NAME: keys.label(SIG_NAME), KX_NAME: keys.label(KX_NAME)}
    values = {
        "gateway_id": gateway_id,
        "currencies": currencies,
        "pin_debit": "yes" if pin_debit else "no",
        "sale": "yes" if sale else "no",
    }
    reg = await register_entity(
        client,
        root=root,
        brand=brand,
        requester=EntityKind.GATEWAY,
        id_data=IDData(None, acquirer_bin, gateway_id),
        sig_key=sig_key,
        kx_key=kx_key,
        values=values,
    )
    return GatewayIdentity(
        brand,
        root,
        reg.sig_cert,
        reg.kx_cert,
        tuple(reg.chain),
        labels[SIG_NAME],
        labels[KX_NAME],
        reg.ca.bci,
        tuple(reg.ca.crls),
    )
