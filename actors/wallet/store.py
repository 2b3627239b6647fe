"""The wallet database: cardholders, their cards and purchases.

Rule 1: SQLite in WAL mode under ``<data_dir>/wallet/<instance>.sqlite``, schema created by the
code and versioned.
Rule 2: no PAN, account number, PANSecret, CardSecret or passphrase in clear: cards hold the
keystore-sealed ``CardSecrets``, a display hint (last four digits) and certificates;
cardholders hold an scrypt hash (actors/wallet/vault.py).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from protocol import codec

SCHEMA_VERSION = 2  # 2: cards.pin (OPE PIN accounts)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cardholders (
    user TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL, n INTEGER NOT NULL,
    created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cards (
    card_id TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES cardholders(user),
    brand TEXT NOT NULL, hint TEXT NOT NULL, key_label TEXT NOT NULL,
    cert BLOB NOT NULL, chain BLOB NOT NULL, root BLOB NOT NULL, sealed BLOB NOT NULL,
    created INTEGER NOT NULL, pin INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS purchases (
    xid BLOB PRIMARY KEY, card_id TEXT NOT NULL REFERENCES cards(card_id),
    merchant TEXT NOT NULL, trans_ids BLOB NOT NULL, merchant_cert BLOB NOT NULL,
    description TEXT NOT NULL, currency TEXT NOT NULL, amount INTEGER NOT NULL,
    state BLOB NOT NULL, completion INTEGER, auth_code INTEGER, updated INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class CardRow:
    card_id: str
    user: str
    brand: str
    hint: str
    key_label: str
    cert: bytes
    chain: list[bytes]
    root: bytes
    sealed: bytes
    pin: bool = False  # an OPE PIN account: a purchase needs the thin client's PIN seal


@dataclass(frozen=True)
class PurchaseRow:
    xid: bytes
    card_id: str
    merchant: str
    trans_ids: bytes
    merchant_cert: bytes
    description: str
    currency: str
    amount: int
    state: bytes
    completion: int | None
    auth_code: int | None


class WalletStore:
    """One wallet instance's database (Rules 1, 2)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, data_dir: Path, instance: str) -> WalletStore:
        path = Path(data_dir) / "wallet" / f"{instance}.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        columns = {r[1] for r in db.execute("PRAGMA table_info(cards)")}
        with db:
            if "pin" not in columns:  # a version 1 database: cards had no PIN flag
                db.execute("ALTER TABLE cards ADD COLUMN pin INTEGER NOT NULL DEFAULT 0")
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        return cls(db, path)

    def close(self) -> None:
        self.db.close()

    def add_cardholder(self, user: str, salt: bytes, digest: bytes, n: int, now_ms: int) -> bool:
        """False if ``user`` exists already."""
        with self.db:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO cardholders VALUES (?,?,?,?,?)",
                (user, salt, digest, n, now_ms),
            )
        return cur.rowcount == 1

    def cardholder(self, user: str) -> tuple[bytes, bytes, int] | None:
        r = self.db.execute(
            "SELECT salt, hash, n FROM cardholders WHERE user = ?", (user,)
        ).fetchone()
        return None if r is None else (r[0], r[1], r[2])

    def add_card(self, row: CardRow, now_ms: int) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO cards (card_id, user, brand, hint, key_label, cert, chain, root,"
                " sealed, created, pin) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (row.card_id, row.user, row.brand, row.hint, row.key_label, row.cert,
                 codec.packb(row.chain), row.root, row.sealed, now_ms, int(row.pin)),
            )  # fmt: skip

    def _card(self, r: sqlite3.Row) -> CardRow:
        return CardRow(
            r["card_id"], r["user"], r["brand"], r["hint"], r["key_label"], r["cert"],
            list(codec.unpackb(r["chain"])), r["root"], r["sealed"], bool(r["pin"]),
        )  # fmt: skip

    def card(self, card_id: str) -> CardRow | None:
        r = self.db.execute("SELECT * FROM cards WHERE card_id = ?", (card_id,)).fetchone()
        return None if r is None else self._card(r)

    def cards(self, user: str) -> list[CardRow]:
        rows = self.db.execute("SELECT * FROM cards WHERE user = ? ORDER BY created", (user,))
        return [self._card(r) for r in rows]

    def save_purchase(self, row: PurchaseRow, now_ms: int) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO purchases VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (row.xid, row.card_id, row.merchant, row.trans_ids, row.merchant_cert,
                 row.description, row.currency, row.amount, row.state, row.completion,
                 row.auth_code, now_ms),
            )  # fmt: skip

    def purchase(self, xid: bytes) -> PurchaseRow | None:
        r = self.db.execute("SELECT * FROM purchases WHERE xid = ?", (xid,)).fetchone()
        if r is None:
            return None
        return PurchaseRow(
            r["xid"], r["card_id"], r["merchant"], r["trans_ids"], r["merchant_cert"],
            r["description"], r["currency"], r["amount"], r["state"], r["completion"],
            r["auth_code"],
        )  # fmt: skip
