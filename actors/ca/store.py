"""The CA database: certificates, serials, revocations, CRLs/BCIs, requests and challenges.

Rule 1: SQLite in WAL mode under ``<data_dir>/ca/ca.sqlite``; the schema is created by the code
and versioned (``meta.schema_version``). Every multi-row change is one transaction.
Rule 2: serials come from a persisted counter that only moves forward: a serial handed out
is never handed out again, even if the issuance that asked for it failed or the process died.
Rule 3: the PAN is never stored. A cardholder certificate row holds the certificate (whose
account hash is keyed by PANSecret) and opaque ids only.
Rule 4: request ids (RRPIDs) and challenges are remembered with the reply sent; a repeated
identical request gets the stored reply, a different request under a seen id is a replay.
Rule 5: what a pended cardholder request leaves behind (CABackKey, Nonce-CCA) is stored only
sealed (``held``, see ``actors.ca.vault``); a version-1 database gains that table on open.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2  # 2: table ``held``

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS serial_counter (id INTEGER PRIMARY KEY CHECK (id = 1),
    next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cas (
    name TEXT PRIMARY KEY,          -- "root", "alpha.brand", "alpha.cca", "alpha.cca.kx" ...
    brand TEXT NOT NULL,
    role TEXT NOT NULL,             -- root | brand | cca | mca | pca
    key_use TEXT NOT NULL,          -- sig | kx
    key_label TEXT NOT NULL,
    serial INTEGER NOT NULL REFERENCES certs(serial)
);
CREATE TABLE IF NOT EXISTS certs (
    serial INTEGER PRIMARY KEY,
    issuer TEXT NOT NULL,           -- CA name of the issuer (``cas.name``)
    subject TEXT NOT NULL,          -- common name (opaque for cardholders)
    cert_type TEXT NOT NULL,
    brand TEXT NOT NULL,
    key_use TEXT NOT NULL,
    thumb BLOB NOT NULL UNIQUE,
    spki_hash BLOB NOT NULL,
    not_after INTEGER NOT NULL,     -- ms since the epoch
    der BLOB NOT NULL,
    issued_at INTEGER NOT NULL,
    revoked_at INTEGER,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS certs_spki ON certs (spki_hash);
CREATE TABLE IF NOT EXISTS crls (
    ca TEXT NOT NULL, number INTEGER NOT NULL, der BLOB NOT NULL, created INTEGER NOT NULL,
    PRIMARY KEY (ca, number));
CREATE TABLE IF NOT EXISTS bcis (
    brand TEXT NOT NULL, sequence INTEGER NOT NULL, data BLOB NOT NULL,
    created INTEGER NOT NULL, PRIMARY KEY (brand, sequence));
CREATE TABLE IF NOT EXISTS requests (
    rrpid BLOB PRIMARY KEY,
    digest BLOB NOT NULL,           -- SHA-256 of the request body: same id, other body = replay
    msg_type TEXT NOT NULL,
    reply_type TEXT NOT NULL,
    reply BLOB NOT NULL,
    created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS challenges (
    chall BLOB PRIMARY KEY,         -- Chall-CA handed out in RegFormRes
    brand TEXT NOT NULL,
    reg_form_id INTEGER NOT NULL,
    created INTEGER NOT NULL,
    used_by BLOB);                  -- RRPID of the CertReq that consumed it
CREATE TABLE IF NOT EXISTS pending (
    rrpid BLOB PRIMARY KEY,         -- the CertReq's RRPID
    lid_ee BLOB NOT NULL UNIQUE,
    state TEXT NOT NULL,            -- pending | approved | rejected | issued:<serials>
    detail BLOB NOT NULL,           -- what the issuing step needs (never a PAN)
    created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS held (
    rrpid BLOB PRIMARY KEY REFERENCES pending(rrpid),
    sealed BLOB NOT NULL);          -- vault.HeldSecrets sealed to the CCA's kx key
"""


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


@dataclass(frozen=True, slots=True)
class StoredReply:
    digest: bytes
    reply_type: str
    reply: bytes


_CERT_COLS = (
    "serial, issuer, subject, cert_type, brand, key_use, thumb, not_after, der, revoked_at, reason"
)


class CAStore:
    """One SQLite database; safe to share between coroutines of one process (one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)  # IF NOT EXISTS throughout: idempotent
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO serial_counter (id, next) VALUES (1, 1000)")
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        if self.meta("schema_version") == "1":  # v1 -> v2 only added a table, made above
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        version = self.meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise RuntimeError(f"CA database schema {version}, code expects {SCHEMA_VERSION}")

    @classmethod
    def open(cls, data_dir: Path) -> CAStore:
        """The CA database of a deployment's ``data_dir``."""
        return cls(data_dir / "ca" / "ca.sqlite")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- meta and serials ---------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def next_serial(self) -> int:
        """A serial never returned before (committed before it is used, Rule 2)."""
        with self.transaction() as db:
            (serial,) = db.execute(
                "UPDATE serial_counter SET next = next + 1 WHERE id = 1 RETURNING next - 1"
            ).fetchone()
        return int(serial)

    # -- CAs and certificates -------------------------------------------------------------

    def add_cert(
        self,
        db: sqlite3.Connection,
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
            "INSERT INTO certs (serial, issuer, subject, cert_type, brand, key_use, thumb,"
            " spki_hash, not_after, der, issued_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                serial,
                issuer,
                subject,
                cert_type,
                brand,
                key_use,
                thumb,
                spki_hash,
                not_after,
                der,
                issued_at,
            ),
        )

    def add_ca(self, db: sqlite3.Connection, row: CARow) -> None:
        db.execute(
            "INSERT INTO cas (name, brand, role, key_use, key_label, serial) VALUES (?,?,?,?,?,?)",
            (row.name, row.brand, row.role, row.key_use, row.key_label, row.serial),
        )

    def ca(self, name: str) -> CARow | None:
        row = self._db.execute(
            "SELECT name, brand, role, key_use, key_label, serial FROM cas WHERE name = ?",
            (name,),
        ).fetchone()
        return None if row is None else CARow(*row)

    def cas(self) -> list[CARow]:
        rows = self._db.execute(
            "SELECT name, brand, role, key_use, key_label, serial FROM cas ORDER BY rowid"
        ).fetchall()
        return [CARow(*r) for r in rows]

    def cert(self, serial: int) -> CertRow | None:
        row = self._db.execute(
            f"SELECT {_CERT_COLS} FROM certs WHERE serial = ?",  # noqa: S608 - constant columns
            (serial,),
        ).fetchone()
        return None if row is None else CertRow(*row)

    def cert_by_thumb(self, thumb: bytes) -> CertRow | None:
        row = self._db.execute(
            f"SELECT {_CERT_COLS} FROM certs WHERE thumb = ?",  # noqa: S608 - constant columns
            (thumb,),
        ).fetchone()
        return None if row is None else CertRow(*row)

    def certs(self, *, brand: str | None = None, cert_type: str | None = None) -> list[CertRow]:
        sql = f"SELECT {_CERT_COLS} FROM certs WHERE 1=1"  # noqa: S608
        args: list[object] = []
        if brand is not None:
            sql += " AND brand = ?"
            args.append(brand)
        if cert_type is not None:
            sql += " AND cert_type = ?"
            args.append(cert_type)
        return [CertRow(*r) for r in self._db.execute(sql + " ORDER BY serial", args)]

    def key_certified(self, spki_hash: bytes) -> bool:
        """A certificate for this public key exists (keys are certified once)."""
        row = self._db.execute(
            "SELECT 1 FROM certs WHERE spki_hash = ? LIMIT 1", (spki_hash,)
        ).fetchone()
        return row is not None

    def revoked(self, issuer: str) -> list[tuple[int, int]]:
        """(serial, revoked_at ms) of every revoked certificate ``issuer`` issued."""
        rows = self._db.execute(
            "SELECT serial, revoked_at FROM certs WHERE issuer = ? AND revoked_at IS NOT NULL"
            " ORDER BY serial",
            (issuer,),
        ).fetchall()
        return [(int(s), int(t)) for s, t in rows]

    def mark_revoked(self, db: sqlite3.Connection, serial: int, when: int, reason: str) -> bool:
        """Revoke inside the caller's transaction; False if it was already revoked."""
        cur = db.execute(
            "UPDATE certs SET revoked_at = ?, reason = ? WHERE serial = ? AND revoked_at IS NULL",
            (when, reason, serial),
        )
        return cur.rowcount == 1

    # -- CRLs and BCIs ----------------------------------------------------------------------

    def add_crl(self, db: sqlite3.Connection, ca: str, number: int, der: bytes, now: int) -> None:
        db.execute(
            "INSERT INTO crls (ca, number, der, created) VALUES (?,?,?,?)", (ca, number, der, now)
        )

    def latest_crl(self, ca: str) -> tuple[int, bytes] | None:
        row = self._db.execute(
            "SELECT number, der FROM crls WHERE ca = ? ORDER BY number DESC LIMIT 1", (ca,)
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def add_bci(self, db: sqlite3.Connection, brand: str, seq: int, data: bytes, now: int) -> None:
        db.execute(
            "INSERT INTO bcis (brand, sequence, data, created) VALUES (?,?,?,?)",
            (brand, seq, data, now),
        )

    def latest_bci(self, brand: str) -> tuple[int, bytes] | None:
        row = self._db.execute(
            "SELECT sequence, data FROM bcis WHERE brand = ? ORDER BY sequence DESC LIMIT 1",
            (brand,),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    # -- requests, challenges, pending ----------------------------------------------------

    def reply_for(self, rrpid: bytes) -> StoredReply | None:
        row = self._db.execute(
            "SELECT digest, reply_type, reply FROM requests WHERE rrpid = ?", (rrpid,)
        ).fetchone()
        return None if row is None else StoredReply(bytes(row[0]), str(row[1]), bytes(row[2]))

    def save_reply(
        self,
        db: sqlite3.Connection,
        rrpid: bytes,
        digest: bytes,
        msg_type: str,
        reply_type: str,
        reply: bytes,
        now: int,
    ) -> None:
        db.execute(
            "INSERT INTO requests (rrpid, digest, msg_type, reply_type, reply, created)"
            " VALUES (?,?,?,?,?,?)",
            (rrpid, digest, msg_type, reply_type, reply, now),
        )

    def add_challenge(
        self, db: sqlite3.Connection, chall: bytes, brand: str, reg_form_id: int, now: int
    ) -> None:
        db.execute(
            "INSERT INTO challenges (chall, brand, reg_form_id, created) VALUES (?,?,?,?)",
            (chall, brand, reg_form_id, now),
        )

    def challenge(self, chall: bytes) -> tuple[str, int, int, bytes | None] | None:
        """(brand, reg_form_id, created ms, used_by RRPID) of a Chall-CA handed out."""
        row = self._db.execute(
            "SELECT brand, reg_form_id, created, used_by FROM challenges WHERE chall = ?",
            (chall,),
        ).fetchone()
        if row is None:
            return None
        return str(row[0]), int(row[1]), int(row[2]), None if row[3] is None else bytes(row[3])

    def use_challenge(self, db: sqlite3.Connection, chall: bytes, rrpid: bytes) -> bool:
        """Consume a Chall-CA inside the caller's transaction; False if already used."""
        cur = db.execute(
            "UPDATE challenges SET used_by = ? WHERE chall = ? AND used_by IS NULL",
            (rrpid, chall),
        )
        return cur.rowcount == 1

    def add_pending(
        self, db: sqlite3.Connection, rrpid: bytes, lid_ee: bytes, detail: bytes, now: int
    ) -> None:
        db.execute(
            "INSERT INTO pending (rrpid, lid_ee, state, detail, created) VALUES (?,?,?,?,?)",
            (rrpid, lid_ee, "pending", detail, now),
        )

    def pending(self, rrpid: bytes) -> tuple[bytes, str, bytes] | None:
        """(lid_ee, state, detail) of a pended CertReq."""
        row = self._db.execute(
            "SELECT lid_ee, state, detail FROM pending WHERE rrpid = ?", (rrpid,)
        ).fetchone()
        return None if row is None else (bytes(row[0]), str(row[1]), bytes(row[2]))

    def pending_by_lid(self, lid_ee: bytes) -> tuple[bytes, str, bytes] | None:
        """(CertReq RRPID, state, detail) of the pending request of LID-EE."""
        row = self._db.execute(
            "SELECT rrpid, state, detail FROM pending WHERE lid_ee = ?", (lid_ee,)
        ).fetchone()
        return None if row is None else (bytes(row[0]), str(row[1]), bytes(row[2]))

    def decide_pending(self, rrpid: bytes, state: str) -> bool:
        """Operator decision (``approved``/``rejected``) on a request still pending."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE pending SET state = ? WHERE rrpid = ? AND state = 'pending'",
                (state, rrpid),
            )
        return cur.rowcount == 1

    def pending_list(self) -> list[tuple[bytes, str, int]]:
        rows = self._db.execute("SELECT rrpid, state, created FROM pending ORDER BY created")
        return [(bytes(r[0]), str(r[1]), int(r[2])) for r in rows]

    def set_pending_state(self, db: sqlite3.Connection, rrpid: bytes, state: str) -> None:
        db.execute("UPDATE pending SET state = ? WHERE rrpid = ?", (state, rrpid))

    def add_held(self, db: sqlite3.Connection, rrpid: bytes, sealed: bytes) -> None:
        """Keep the sealed secrets of pended request ``rrpid`` (Rule 5)."""
        db.execute("INSERT INTO held (rrpid, sealed) VALUES (?, ?)", (rrpid, sealed))

    def held(self, rrpid: bytes) -> bytes | None:
        row = self._db.execute("SELECT sealed FROM held WHERE rrpid = ?", (rrpid,)).fetchone()
        return None if row is None else bytes(row[0])

    def pending_state(self, db: sqlite3.Connection, rrpid: bytes) -> str | None:
        """The state of pending request ``rrpid`` as seen inside the caller's transaction."""
        row = db.execute("SELECT state FROM pending WHERE rrpid = ?", (rrpid,)).fetchone()
        return None if row is None else str(row[0])
