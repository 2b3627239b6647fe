"""DD(t) and L(t1, t2): digests that bind one part of a message to another without revealing it.

Rule 1: every digest is labelled (``primitives.labelled_digest``) with the content type of the
data it stands for ("OIData", "PIData", …), so a digest made for one part never matches another.
Rule 2: a link is checked against the exact bytes received; a mismatch raises
``ProtocolError(LINKAGE_FAILURE)``, an unknown algorithm ``DECODING_FAILURE`` (at decode).
Rule 3: L(t1, t2) protects nothing about t1 by itself: it is only meaningful inside a signature
or an authenticated encryption.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import IntEnum

from protocol import codec, primitives
from protocol.codec import Digest
from protocol.errors import ErrorCode, ProtocolError


class DigestAlg(IntEnum):
    """Digest algorithms a DD may name (one today; the field keeps the format agile)."""

    SHA256 = 1


@dataclass(frozen=True, slots=True)
class DigestedData:
    """DD(t): the algorithm and the labelled digest of t."""

    alg: DigestAlg
    digest: Digest


@dataclass(frozen=True, slots=True)
class Linked:
    """L(t1, t2) = {t1, DD(t2)}: t1 as exact bytes, bound to t2 by its digest."""

    content: bytes
    link: DigestedData


def digest_of(label: str, data: bytes) -> bytes:
    """H(t): the labelled SHA-256 digest of ``data`` as content type ``label``."""
    return primitives.labelled_digest("H/" + label, data)


def dd(label: str, data: bytes) -> DigestedData:
    """DD(t) of ``data`` as content type ``label``."""
    return DigestedData(DigestAlg.SHA256, digest_of(label, data))


def check_dd(link: DigestedData, label: str, data: bytes, what: str = "") -> None:
    """Raise ``LINKAGE_FAILURE`` unless ``link`` is DD(``data``) for ``label``."""
    check_digest(link.digest, label, data, what)


def check_digest(digest: bytes, label: str, data: bytes, what: str = "") -> None:
    """Raise ``LINKAGE_FAILURE`` unless ``digest`` is H(``data``) for ``label``."""
    if not hmac.compare_digest(digest, digest_of(label, data)):
        raise ProtocolError(ErrorCode.LINKAGE_FAILURE, f"{what or label} digest does not match")


def make_linked(content: bytes, linked_label: str, linked: bytes) -> bytes:
    """Encoded L(content, linked): ``linked`` is named by ``linked_label`` in the digest."""
    return codec.encode(Linked(content, dd(linked_label, linked)))


def open_linked(data: bytes, linked_label: str, linked: bytes | None = None) -> Linked:
    """Decode an encoded L; when ``linked`` is given, check the link against it."""
    record = codec.decode(Linked, data)
    if linked is not None:
        check_dd(record.link, linked_label, linked)
    return record


codec.validate_schema(Linked)
