"""TLS for the front doors: the test environment's certificate, or a real one by configuration.

Rule 1: ``web_tls_cert``/``web_tls_key`` name a real certificate and key (PEM); when both are
empty, the test environment's are used: ``<data_dir>/tls/server.pem`` and ``server.key``,
issued by a throw-away CA ``<data_dir>/tls/ca.pem`` (its key is not kept) for 127.0.0.1,
::1 and localhost. The supervisor makes them before it starts any child
(``ensure_test_certificate``), every file 0600 in a 0700 directory.
Rule 2: clients trust ``web_tls_ca`` (empty: ``<data_dir>/tls/ca.pem``) and nothing else: no
system store, hostname checked.
Rule 3: TLS 1.2 at least. The server key is a file, not a token key: the HSM holds every SET
key; a TLS key in the token would need an OpenSSL provider for PKCS#11 (a deployment's choice,
README "HTTPS front doors").
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from setpay.config import Settings


def tls_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "tls"


def server_files(settings: Settings) -> tuple[Path, Path]:
    """(certificate chain PEM, key PEM) the front doors serve (Rule 1)."""
    if settings.web_tls_cert and settings.web_tls_key:
        return Path(settings.web_tls_cert), Path(settings.web_tls_key)
    return tls_dir(settings) / "server.pem", tls_dir(settings) / "server.key"


def ca_file(settings: Settings) -> Path:
    """The CA file thin clients trust (Rule 2)."""
    return Path(settings.web_tls_ca) if settings.web_tls_ca else tls_dir(settings) / "ca.pem"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def ensure_test_certificate(settings: Settings) -> bool:
    """Make the test environment's CA and server certificate unless a real one is configured
    or they exist and are valid for another day; True if made (Rule 1)."""
    if settings.web_tls_cert and settings.web_tls_key:
        return False
    cert_path, key_path = server_files(settings)
    now = dt.datetime.now(dt.UTC)
    if cert_path.is_file() and key_path.is_file() and ca_file(settings).is_file():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if cert.not_valid_after_utc > now + dt.timedelta(days=1):
                return False
        except ValueError:
            pass
    directory = tls_dir(settings)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # A name of its own: clients trusting two environments' CAs find the right issuer.
    ca_name = x509.Name([x509.NameAttribute(
        NameOID.COMMON_NAME, f"setpay test environment CA {secrets.token_hex(4)}")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
             x509.IPAddress(ipaddress.ip_address("::1"))]  # fmt: skip
    if settings.web_host not in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::", ""):  # noqa: S104
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(settings.web_host)))
        except ValueError:
            names.append(x509.DNSName(settings.web_host))
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    _write_private(key_path, key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    _write_private(cert_path, server.public_bytes(pem) + ca.public_bytes(pem))
    _write_private(ca_file(settings), ca.public_bytes(pem))
    return True


def server_context(settings: Settings) -> ssl.SSLContext:
    """The front door's TLS context (Rules 1, 3)."""
    cert, key = server_files(settings)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def client_context(cafile: Path) -> ssl.SSLContext:
    """A thin client's TLS context: only ``cafile`` trusted, hostname checked (Rule 2)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
