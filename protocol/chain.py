"""SET certificate path validation: leaf → CA → Brand → trusted root, all in one brand.

Rule 1: a path is accepted only if every link is directly issued by the next (name and
signature), every certificate is within its validity at the injected ``now``, every
certificate's certType and key use fit its position (root → brand → CCA/MCA/PCA → end
entity), and the whole path carries one brand.
Rule 2: revocation is checked against the CRLs the current BCI names, and that BCI must have
verified under the brand certificate of this very path.
Rule 3: the caller states what the sender must be (``Expect``: certType, key use, brand);
anything else is refused. Failures raise ``ProtocolError`` with the SET code: missing,
invalid, expired, revoked certificate, or signature failure.
Rule 4 (cache): an accepted path is remembered (``PathCache``, bounded, least recently used
first out) under the thumbprints of its certificates (root included), the ``Expect`` and the
fingerprint of the revocation view it was checked against (``RevocationState.fingerprint``:
Brand CA, BCI bytes, the CRLs held). A later call that builds the same path against the same
view is accepted without redoing the signatures and CRL look-ups, while ``now`` lies inside
the intersection of the certificates' validity periods; outside it the path is validated again
(and refused with the code of the full check). A new BCI, or a CRL added, is another view and
so another key: a revocation is never hidden by a warm cache. Refusals are never cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from protocol.certs import (
    CA_TYPES,
    ISSUER_TYPE,
    CertType,
    KeyUse,
    SetExtension,
    cert_thumbprint,
    check_issued_by,
    is_ca_cert,
    set_extension,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.revocation import RevocationState

MAX_PATH = 4  # leaf, CA, brand, root (no geo-political CA level in setpay)
PATH_CACHE_SIZE = 4096  # accepted paths remembered per process (Rule 4)


@dataclass(frozen=True, slots=True)
class Expect:
    """What the end-entity certificate must be for the message at hand."""

    cert_type: CertType
    key_use: KeyUse
    brand: str | None = None  # None: any brand (the path still stays inside one)


@dataclass(frozen=True)
class ValidatedPath:
    """An accepted path, leaf first, root last, with the leaf's SET data."""

    certificates: tuple[x509.Certificate, ...]
    leaf_ext: SetExtension

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]

    @property
    def brand(self) -> str:
        return self.leaf_ext.brand


def _fail(code: ErrorCode, detail: str) -> ProtocolError:
    return ProtocolError(code, detail)


def _key_id(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_class(kind).value  # type: ignore[type-var]
    except x509.ExtensionNotFound:
        return None
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest
    return value.key_identifier if isinstance(value, x509.AuthorityKeyIdentifier) else None


def _find_issuer(
    cert: x509.Certificate, pool: list[x509.Certificate], root: x509.Certificate
) -> x509.Certificate:
    # Name first, then the key identifier, so a renewed CA (same name, new key) is told apart
    # from the old one. The trusted root comes first: a look-alike in the pool never shadows
    # it. The signature check in ``_validate`` decides in the end.
    named = [c for c in [root, *pool] if c.subject == cert.issuer]
    if not named:
        raise _fail(ErrorCode.MISSING_CERTIFICATE, "issuer certificate not supplied")
    wanted = _key_id(cert, x509.AuthorityKeyIdentifier)
    for candidate in named:
        if wanted is not None and _key_id(candidate, x509.SubjectKeyIdentifier) == wanted:
            return candidate
    return named[0]


def _check_time(cert: x509.Certificate, ext: SetExtension, now: datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise _fail(
            ErrorCode.EXPIRED_CERTIFICATE, f"{ext.cert_type.name.lower()} certificate not in date"
        )


def _check_position(
    child: SetExtension, parent: SetExtension, parent_cert: x509.Certificate
) -> None:
    if ISSUER_TYPE[child.cert_type] is not parent.cert_type:
        raise _fail(
            ErrorCode.INVALID_CERTIFICATE,
            f"{child.cert_type.name.lower()} issued by {parent.cert_type.name.lower()}",
        )
    if not is_ca_cert(parent.cert_type, parent.key_use):
        raise _fail(ErrorCode.INVALID_CERTIFICATE, "issuer is not a CA signature certificate")
    try:
        constraints = parent_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = parent_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        raise _fail(ErrorCode.INVALID_CERTIFICATE, "CA without constraints or usage") from None
    if not constraints.ca or not usage.key_cert_sign:
        raise _fail(ErrorCode.INVALID_CERTIFICATE, "issuer may not sign certificates")
    if parent.cert_type is not CertType.ROOT and child.brand != parent.brand:
        raise _fail(ErrorCode.INVALID_CERTIFICATE, "path crosses brands")


def _check_leaf_usage(cert: x509.Certificate, ext: SetExtension) -> None:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        raise _fail(ErrorCode.INVALID_CERTIFICATE, "no key usage") from None
    ok = (
        usage.digital_signature
        if ext.key_use is KeyUse.SIGNATURE
        else usage.key_encipherment or usage.key_agreement
    )
    if not ok:
        raise _fail(ErrorCode.INVALID_CERTIFICATE, "key usage does not allow the SET key use")


def build_path(
    leaf: x509.Certificate, others: Iterable[x509.Certificate], root: x509.Certificate
) -> list[x509.Certificate]:
    """Order ``leaf`` and the supplied certificates into leaf → … → ``root``."""
    pool = [c for c in others if c != root]
    path = [leaf]
    while path[-1] != root:
        if len(path) >= MAX_PATH:
            raise _fail(ErrorCode.INVALID_CERTIFICATE, "path too long or not to the trusted root")
        issuer = _find_issuer(path[-1], pool, root)
        if issuer == path[-1]:
            raise _fail(ErrorCode.INVALID_CERTIFICATE, "self-signed certificate is not trusted")
        path.append(issuer)
    return path


def validate_path(
    leaf: x509.Certificate,
    others: Iterable[x509.Certificate],
    *,
    root: x509.Certificate,
    now: datetime,
    expect: Expect,
    revocation: RevocationState | None,
) -> ValidatedPath:
    """Validate ``leaf`` up to the trusted ``root`` (Rules 1-4). Raises ``ProtocolError``.

    ``revocation=None`` skips CRLs; it is meant only for the brand certificate a BCI is
    being verified under (the BCI cannot be trusted before that certificate is).
    """
    try:
        return PATHS.validate(leaf, others, root, now, expect, revocation)
    except ValueError:  # a lazily parsed field of a certificate not from load_certificate
        raise _fail(ErrorCode.INVALID_CERTIFICATE, "malformed certificate") from None


_Key = tuple[tuple[bytes, ...], Expect, bytes | None]


class PathCache:
    """Accepted paths by certificate thumbprints, expectation and revocation view (Rule 4).

    Bounded to ``size`` entries (least recently used dropped first); safe to share between
    threads. ``hits``/``misses`` count lookups, for tests and the bench."""

    def __init__(self, size: int = PATH_CACHE_SIZE) -> None:
        self.size = size
        self._paths: OrderedDict[_Key, tuple[datetime, datetime, SetExtension]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._paths)

    def clear(self) -> None:
        with self._lock:
            self._paths.clear()
            self.hits = self.misses = 0

    def validate(
        self,
        leaf: x509.Certificate,
        others: Iterable[x509.Certificate],
        root: x509.Certificate,
        now: datetime,
        expect: Expect,
        revocation: RevocationState | None,
    ) -> ValidatedPath:
        path = build_path(leaf, others, root)
        key: _Key = (
            tuple(cert_thumbprint(c) for c in path),
            expect,
            None if revocation is None else revocation.fingerprint,
        )
        with self._lock:
            found = self._paths.get(key)
            if found is not None:
                self._paths.move_to_end(key)
        if found is not None and found[0] <= now <= found[1]:
            self.hits += 1
            return ValidatedPath(tuple(path), found[2])
        self.misses += 1
        accepted = _validate_built(path, root, now, expect, revocation)
        start = max(c.not_valid_before_utc for c in path)
        end = min(c.not_valid_after_utc for c in path)
        with self._lock:
            self._paths[key] = (start, end, accepted.leaf_ext)
            self._paths.move_to_end(key)
            while len(self._paths) > self.size:
                self._paths.popitem(last=False)
        return accepted


PATHS = PathCache()  # the process's cache of accepted paths (Rule 4)


def _validate_built(
    path: list[x509.Certificate],
    root: x509.Certificate,
    now: datetime,
    expect: Expect,
    revocation: RevocationState | None,
) -> ValidatedPath:
    exts = [set_extension(c) for c in path]
    if exts[-1].cert_type is not CertType.ROOT:
        raise _fail(ErrorCode.INVALID_CERTIFICATE, "trusted certificate is not a root")
    check_issued_by(root, root)
    for cert, ext in zip(path, exts, strict=True):
        _check_time(cert, ext, now)
    for i in range(len(path) - 1):
        check_issued_by(path[i], path[i + 1])
        _check_position(exts[i], exts[i + 1], path[i + 1])
        if i > 0 and exts[i].cert_type not in CA_TYPES:
            raise _fail(ErrorCode.INVALID_CERTIFICATE, "end-entity certificate inside a path")
    leaf_ext = exts[0]
    _check_leaf_usage(path[0], leaf_ext)
    if leaf_ext.cert_type is not expect.cert_type or leaf_ext.key_use is not expect.key_use:
        raise _fail(
            ErrorCode.INVALID_CERTIFICATE,
            f"expected a {expect.cert_type.name.lower()} {expect.key_use.name.lower()} "
            f"certificate, got {leaf_ext.cert_type.name.lower()} "
            f"{leaf_ext.key_use.name.lower()}",
        )
    if expect.brand is not None and leaf_ext.brand != expect.brand:
        raise _fail(ErrorCode.INVALID_CERTIFICATE, "certificate of another brand")
    if revocation is not None:
        _check_revocation(path, exts, revocation)
    return ValidatedPath(tuple(path), leaf_ext)


def _check_revocation(
    path: list[x509.Certificate], exts: list[SetExtension], revocation: RevocationState
) -> None:
    brand_certs = [c for c, e in zip(path, exts, strict=True) if e.cert_type is CertType.BRAND]
    if not brand_certs or cert_thumbprint(brand_certs[0]) != revocation.brand_thumbprint:
        raise _fail(ErrorCode.INVALID_CERTIFICATE, "BCI is not from this path's Brand CA")
    for i in range(len(path) - 1):
        revocation.check(path[i], path[i + 1])
