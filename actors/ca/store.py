"""The CA database: certificates, serials, revocations, CRLs/BCIs, requests and challenges.

Rule 1: one store (setpay/store.py: SQLite, WAL, 0600) under ``<data_dir>/ca/ca.sqlite``; the
schema is Core metadata, versioned by the store layer. Every multi-row change is one
``transaction()``.
Rule 2: serials come from a persisted counter that only moves forward: a serial handed out
is never handed out again, even if the issuance that asked for it failed or the process died.
Rule 3: the PAN is never stored. A cardholder certificate row holds the certificate (whose
account hash is keyed by PANSecret) and opaque ids only.
Rule 4: request ids (RRPIDs) and challenges are remembered with the reply sent (the shared
reply store, ``setpay.store.ReplyStore``); a repeated identical request gets the stored reply,
a different request under a seen id is a replay.
Rule 5: what a pended cardholder request leaves behind (CABackKey, Nonce-CCA) is stored only
sealed (``held``, see ``actors.ca.vault``).
Rule 6: a pended request records the broker identity that asked (``requester``) and, once
approved, the operator's grant (``grant``); a merchant or gateway id is bound to the first
identity whose request for it the CA accepted (``entity_ids``) and stays bound to it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from alembic.operations import Operations

from setpay.store import (
    REPLIES,
    Connection,
    ReplyStore,
    Schema,
    StoredReply,
    open_store,
    widen,
)

__all__ = ["CARow", "CAStore", "CertRow", "StoredReply"]

_MD = sa.MetaData()
B, T, I = sa.LargeBinary, sa.String, sa.BigInteger  # noqa: E741 - column type shorthands
META: Final = sa.Table(
    "meta", _MD,
    sa.Column("key", T(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)  # fmt: skip
SERIAL_COUNTER: Final = sa.Table(
    "serial_counter", _MD,
    sa.Column("id", sa.Integer, sa.CheckConstraint("id = 1"), primary_key=True,
              autoincrement=False),
    sa.Column("next", I, nullable=False),
)  # fmt: skip
CERTS: Final = sa.Table(
    "certs", _MD,
    sa.Column("serial", I, primary_key=True, autoincrement=False),
    sa.Column("issuer", T(64), nullable=False),  # CA name of the issuer (``cas.name``)
    sa.Column("subject", T(255), nullable=False),  # common name (opaque for cardholders)
    sa.Column("cert_type", T(16), nullable=False),
    sa.Column("brand", T(64), nullable=False),
    sa.Column("key_use", T(16), nullable=False),  # signature | key_exchange
    sa.Column("thumb", B, nullable=False, unique=True),
    sa.Column("spki_hash", B, nullable=False, index=True),
    sa.Column("not_after", I, nullable=False),  # ms since the epoch
    sa.Column("der", B, nullable=False),
    sa.Column("issued_at", I, nullable=False),
    sa.Column("revoked_at", I),
    sa.Column("reason", T(32)),
)  # fmt: skip
CAS: Final = sa.Table(
    "cas", _MD,
    sa.Column("name", T(64), primary_key=True),  # "root", "alpha.brand", "alpha.cca" ...
    sa.Column("brand", T(64), nullable=False),
    sa.Column("role", T(8), nullable=False),  # root | brand | cca | mca | pca
    sa.Column("key_use", T(8), nullable=False),  # sig | kx
    sa.Column("key_label", T(128), nullable=False),
    sa.Column("serial", I, sa.ForeignKey("certs.serial"), nullable=False),
)  # fmt: skip
CRLS: Final = sa.Table(
    "crls", _MD,
    sa.Column("ca", T(64), primary_key=True),
    sa.Column("number", I, primary_key=True, autoincrement=False),
    sa.Column("der", B, nullable=False),
    sa.Column("created", I, nullable=False),
)  # fmt: skip
BCIS: Final = sa.Table(
    "bcis", _MD,
    sa.Column("brand", T(64), primary_key=True),
    sa.Column("sequence", I, primary_key=True, autoincrement=False),
    sa.Column("data", B, nullable=False),
    sa.Column("created", I, nullable=False),
)  # fmt: skip
CHALLENGES: Final = sa.Table(
    "challenges", _MD,
    sa.Column("chall", B, primary_key=True),  # Chall-CA handed out in RegFormRes
    sa.Column("brand", T(64), nullable=False),
    sa.Column("reg_form_id", I, nullable=False),
    sa.Column("created", I, nullable=False),
    sa.Column("used_by", B),  # RRPID of the CertReq that consumed it
)  # fmt: skip
PENDING: Final = sa.Table(
    "pending", _MD,
    sa.Column("rrpid", B, primary_key=True),  # the CertReq's RRPID
    sa.Column("lid_ee", B, nullable=False, unique=True),
    sa.Column("state", T(255), nullable=False),  # pending | approved | rejected | issued:<serials>
    sa.Column("detail", B, nullable=False),  # what the issuing step needs (never a PAN)
    sa.Column("created", I, nullable=False),
    sa.Column("requester", T(255)),  # the broker identity that sent the CertReq (v2)
    sa.Column("grant", B),  # the operator's grant on approval: encoded GatewayCaps (v2)
)  # fmt: skip
ENTITY_IDS: Final = sa.Table(
    "entity_ids", _MD,
    sa.Column("brand", T(64), primary_key=True),
    sa.Column("kind", T(16), primary_key=True),  # merchant | gateway
    sa.Column("entity_id", T(64), primary_key=True),
    sa.Column("identity", T(255), nullable=False),  # broker identity it is bound to
    sa.Column("created", I, nullable=False),
)  # fmt: skip
HELD: Final = sa.Table(
    "held", _MD,
    sa.Column("rrpid", B, sa.ForeignKey("pending.rrpid"), primary_key=True),
    sa.Column("sealed", B, nullable=False),  # vault.HeldSecrets sealed to the CCA's kx key
)  # fmt: skip


def _v2_requester_and_grants(op: Operations) -> None:
    """v1 -> v2: who asked and what was granted (Rule 6)."""
    op.add_column("pending", sa.Column("requester", T(255)))
    op.add_column("pending", sa.Column("grant", B))
    op.create_table(
        "entity_ids",
        sa.Column("brand", T(64), primary_key=True),
        sa.Column("kind", T(16), primary_key=True),
        sa.Column("entity_id", T(64), primary_key=True),
        sa.Column("identity", T(255), nullable=False),
        sa.Column("created", I, nullable=False),
    )


def _v3_key_use_fits(op: Operations) -> None:
    """v2 -> v3: ``certs.key_use`` holds "signature" (SQLite never enforced the length)."""
    widen(op, "certs", "key_use", T(8), T(16))


SCHEMA: Final = Schema("ca", _MD, steps=(_v2_requester_and_grants, _v3_key_use_fits))
FIRST_SERIAL: Final = 1000


@dataclass(frozen=True, slots=True)
class CertRow:
    serial: int
    issuer: str
    subject: str
    cert_type: str
    brand: str
    key_use: str
    thumb: bytes
    not_after: int
    der: bytes
    revoked_at: int | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class CARow:
    name: str
    brand: str
    role: str
    key_use: str
    key_label: str
    serial: int


_CERT_COLS = [
    CERTS.c[n]
    for n in (
        "serial", "issuer", "subject", "cert_type", "brand", "key_use", "thumb", "not_after",
        "der", "revoked_at", "reason",
    )
]  # fmt: skip
_CA_COLS = [CAS.c[n] for n in ("name", "brand", "role", "key_use", "key_label", "serial")]


class CAStore:
    """One CA database (setpay/store.py); safe to share between coroutines and threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_store(path, [SCHEMA, REPLIES])
        self.replies = ReplyStore(self.db)
        with self.transaction() as db:
            db.execute(self.db.insert_ignore(SERIAL_COUNTER), {"id": 1, "next": FIRST_SERIAL})

    @classmethod
    def open(cls, data_dir: Path) -> CAStore:
        """The CA database of a deployment's ``data_dir``."""
        return cls(data_dir / "ca" / "ca.sqlite")

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> AbstractContextManager[Connection]:
        """One atomic change (setpay/store.py): write lock up front, committed on exit,
        rolled back on any exception."""
        return self.db.transaction()

    # -- meta and serials ---------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        value = self.db.scalar(sa.select(META.c.value).where(META.c.key == key))
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute(self.db.upsert(META, {"key": key, "value": value}))

    def next_serial(self) -> int:
        """A serial never returned before (committed before it is used, Rule 2)."""
        c = SERIAL_COUNTER.c
        with self.transaction() as db:
            (serial,) = db.execute(
                sa.update(SERIAL_COUNTER)
                .where(c.id == 1)
                .values(next=c.next + 1)
                .returning(c.next - 1)
            ).one()
        return int(serial)

    # -- CAs and certificates -------------------------------------------------------------

    def add_cert(
        self,
        db: Connection,
        *,
        serial: int,
        issuer: str,
        subject: str,
        cert_type: str,
        brand: str,
        key_use: str,
        thumb: bytes,
        spki_hash: bytes,
        not_after: int,
        der: bytes,
        issued_at: int,
    ) -> None:
        """Insert a certificate row inside the caller's transaction."""
        db.execute(
            sa.insert(CERTS).values(
                serial=serial, issuer=issuer, subject=subject, cert_type=cert_type,
                brand=brand, key_use=key_use, thumb=thumb, spki_hash=spki_hash,
                not_after=not_after, der=der, issued_at=issued_at,
            )
        )  # fmt: skip

    def add_ca(self, db: Connection, row: CARow) -> None:
        db.execute(
            sa.insert(CAS).values(
                name=row.name, brand=row.brand, role=row.role, key_use=row.key_use,
                key_label=row.key_label, serial=row.serial,
            )
        )  # fmt: skip

    def ca(self, name: str) -> CARow | None:
        row = self.db.one(sa.select(*_CA_COLS).where(CAS.c.name == name))
        return None if row is None else CARow(*row)

    def cas(self) -> list[CARow]:
        # Creation order: each CA row names the certificate issued for it, and serials only
        # grow (Rule 2).
        return [CARow(*r) for r in self.db.all(sa.select(*_CA_COLS).order_by(CAS.c.serial))]

    def cert(self, serial: int) -> CertRow | None:
        row = self.db.one(sa.select(*_CERT_COLS).where(CERTS.c.serial == serial))
        return None if row is None else CertRow(*row)

    def cert_by_thumb(self, thumb: bytes) -> CertRow | None:
        row = self.db.one(sa.select(*_CERT_COLS).where(CERTS.c.thumb == thumb))
        return None if row is None else CertRow(*row)

    def certs(self, *, brand: str | None = None, cert_type: str | None = None) -> list[CertRow]:
        stmt = sa.select(*_CERT_COLS)
        if brand is not None:
            stmt = stmt.where(CERTS.c.brand == brand)
        if cert_type is not None:
            stmt = stmt.where(CERTS.c.cert_type == cert_type)
        return [CertRow(*r) for r in self.db.all(stmt.order_by(CERTS.c.serial))]

    def key_certified(self, spki_hash: bytes) -> bool:
        """A certificate for this public key exists (keys are certified once)."""
        stmt = sa.select(sa.literal(1)).where(CERTS.c.spki_hash == spki_hash).limit(1)
        return self.db.one(stmt) is not None

    def revoked(self, issuer: str) -> list[tuple[int, int]]:
        """(serial, revoked_at ms) of every revoked certificate ``issuer`` issued."""
        c = CERTS.c
        rows = self.db.all(
            sa.select(c.serial, c.revoked_at)
            .where(c.issuer == issuer, c.revoked_at.is_not(None))
            .order_by(c.serial)
        )
        return [(int(s), int(t)) for s, t in rows]

    def mark_revoked(self, db: Connection, serial: int, when: int, reason: str) -> bool:
        """Revoke inside the caller's transaction; False if it was already revoked."""
        c = CERTS.c
        cur = db.execute(
            sa.update(CERTS)
            .where(c.serial == serial, c.revoked_at.is_(None))
            .values(revoked_at=when, reason=reason)
        )
        return cur.rowcount == 1

    # -- CRLs and BCIs ----------------------------------------------------------------------

    def add_crl(self, db: Connection, ca: str, number: int, der: bytes, now: int) -> None:
        db.execute(sa.insert(CRLS).values(ca=ca, number=number, der=der, created=now))

    def latest_crl(self, ca: str) -> tuple[int, bytes] | None:
        c = CRLS.c
        row = self.db.one(
            sa.select(c.number, c.der).where(c.ca == ca).order_by(c.number.desc()).limit(1)
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    def crl(self, ca: str, number: int) -> bytes | None:
        """CRL ``number`` of CA ``ca``, or None."""
        c = CRLS.c
        der = self.db.scalar(sa.select(c.der).where(c.ca == ca, c.number == number))
        return None if der is None else bytes(der)

    def add_bci(self, db: Connection, brand: str, seq: int, data: bytes, now: int) -> None:
        db.execute(sa.insert(BCIS).values(brand=brand, sequence=seq, data=data, created=now))

    def latest_bci(self, brand: str) -> tuple[int, bytes] | None:
        c = BCIS.c
        row = self.db.one(
            sa.select(c.sequence, c.data)
            .where(c.brand == brand)
            .order_by(c.sequence.desc())
            .limit(1)
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    # -- requests, challenges, pending ----------------------------------------------------

    def reply_for(self, rrpid: bytes) -> StoredReply | None:
        """The reply stored under ``rrpid`` (seen from the open transaction, if any)."""
        return self.replies.get(rrpid)

    def save_reply(
        self,
        db: Connection,
        rrpid: bytes,
        digest: bytes,
        msg_type: str,
        reply_type: str,
        reply: bytes,
        now: int,
    ) -> None:
        """Store the reply in the caller's transaction. ``msg_type`` (the request's type) is
        not kept: the shared reply store holds what a duplicate needs, and the request type
        is in the logs."""
        del msg_type
        self.replies.save(db, rrpid, digest, reply_type, reply, now)

    def add_challenge(
        self, db: Connection, chall: bytes, brand: str, reg_form_id: int, now: int
    ) -> None:
        db.execute(
            sa.insert(CHALLENGES).values(
                chall=chall, brand=brand, reg_form_id=reg_form_id, created=now
            )
        )

    def challenge(self, chall: bytes) -> tuple[str, int, int, bytes | None] | None:
        """(brand, reg_form_id, created ms, used_by RRPID) of a Chall-CA handed out."""
        c = CHALLENGES.c
        row = self.db.one(
            sa.select(c.brand, c.reg_form_id, c.created, c.used_by).where(c.chall == chall)
        )
        if row is None:
            return None
        return str(row[0]), int(row[1]), int(row[2]), None if row[3] is None else bytes(row[3])

    def use_challenge(self, db: Connection, chall: bytes, rrpid: bytes) -> bool:
        """Consume a Chall-CA inside the caller's transaction; False if already used."""
        c = CHALLENGES.c
        cur = db.execute(
            sa.update(CHALLENGES).where(c.chall == chall, c.used_by.is_(None)).values(used_by=rrpid)
        )
        return cur.rowcount == 1

    def add_pending(
        self,
        db: Connection,
        rrpid: bytes,
        lid_ee: bytes,
        detail: bytes,
        now: int,
        requester: str | None = None,
    ) -> None:
        db.execute(
            sa.insert(PENDING).values(
                rrpid=rrpid, lid_ee=lid_ee, state="pending", detail=detail, created=now,
                requester=requester,
            )
        )  # fmt: skip

    def pending_party(self, rrpid: bytes) -> tuple[str | None, bytes | None]:
        """(requester identity, encoded grant) of pended request ``rrpid`` (Rule 6)."""
        c = PENDING.c
        row = self.db.one(sa.select(c.requester, c.grant).where(c.rrpid == rrpid))
        if row is None:
            return None, None
        return row[0], None if row[1] is None else bytes(row[1])

    def pending_detail(self, rrpid: bytes) -> bytes | None:
        """The detail of pended request ``rrpid`` (what it asked for)."""
        value = self.db.scalar(sa.select(PENDING.c.detail).where(PENDING.c.rrpid == rrpid))
        return None if value is None else bytes(value)

    def entity_owner(self, brand: str, kind: str, entity_id: str) -> str | None:
        """The identity a merchant or gateway id is bound to (Rule 6), or None."""
        c = ENTITY_IDS.c
        value = self.db.scalar(
            sa.select(c.identity).where(c.brand == brand, c.kind == kind, c.entity_id == entity_id)
        )
        return None if value is None else str(value)

    def bind_entity(
        self, db: Connection, brand: str, kind: str, entity_id: str, identity: str, now: int
    ) -> bool:
        """Bind ``entity_id`` to ``identity`` inside the caller's transaction; False if it is
        bound to another identity (Rule 6)."""
        c = ENTITY_IDS.c
        owner = db.execute(
            sa.select(c.identity).where(c.brand == brand, c.kind == kind, c.entity_id == entity_id)
        ).scalar()
        if owner is not None:
            return str(owner) == identity
        db.execute(
            sa.insert(ENTITY_IDS).values(
                brand=brand, kind=kind, entity_id=entity_id, identity=identity, created=now
            )
        )
        return True

    def pending(self, rrpid: bytes) -> tuple[bytes, str, bytes] | None:
        """(lid_ee, state, detail) of a pended CertReq."""
        c = PENDING.c
        row = self.db.one(sa.select(c.lid_ee, c.state, c.detail).where(c.rrpid == rrpid))
        return None if row is None else (bytes(row[0]), str(row[1]), bytes(row[2]))

    def pending_by_lid(self, lid_ee: bytes) -> tuple[bytes, str, bytes] | None:
        """(CertReq RRPID, state, detail) of the pending request of LID-EE."""
        c = PENDING.c
        row = self.db.one(sa.select(c.rrpid, c.state, c.detail).where(c.lid_ee == lid_ee))
        return None if row is None else (bytes(row[0]), str(row[1]), bytes(row[2]))

    def decide_pending(self, rrpid: bytes, state: str, grant: bytes | None = None) -> bool:
        """Operator decision (``approved``/``rejected``, with the ``grant`` of an approved
        gateway request) on a request still pending."""
        c = PENDING.c
        with self.transaction() as db:
            cur = db.execute(
                sa.update(PENDING)
                .where(c.rrpid == rrpid, c.state == "pending")
                .values(state=state, grant=grant)
            )
        return cur.rowcount == 1

    def pending_list(self) -> list[tuple[bytes, str, int]]:
        c = PENDING.c
        rows = self.db.all(sa.select(c.rrpid, c.state, c.created).order_by(c.created, c.rrpid))
        return [(bytes(r[0]), str(r[1]), int(r[2])) for r in rows]

    def set_pending_state(self, db: Connection, rrpid: bytes, state: str) -> None:
        db.execute(sa.update(PENDING).where(PENDING.c.rrpid == rrpid).values(state=state))

    def add_held(self, db: Connection, rrpid: bytes, sealed: bytes) -> None:
        """Keep the sealed secrets of pended request ``rrpid`` (Rule 5)."""
        db.execute(sa.insert(HELD).values(rrpid=rrpid, sealed=sealed))

    def held(self, rrpid: bytes) -> bytes | None:
        value = self.db.scalar(sa.select(HELD.c.sealed).where(HELD.c.rrpid == rrpid))
        return None if value is None else bytes(value)

    def pending_state(self, db: Connection, rrpid: bytes) -> str | None:
        """The state of pending request ``rrpid`` as seen inside the caller's transaction."""
        value = db.execute(sa.select(PENDING.c.state).where(PENDING.c.rrpid == rrpid)).scalar()
        return None if value is None else str(value)
