"""The merchant POS database: hosted merchants, gateway certificates, orders, replies.

Rule 1: SQLite in WAL mode under ``<data_dir>/merchant/<instance>.sqlite``; the schema is
created by the code and versioned (``meta.schema_version``); each state change is one
transaction.
Rule 2: never a PAN, account number, PIN, PANSecret or CardSecret: the merchant never has
them. It stores certificates, order text and amounts, ids, digests, its own signed replies
and the gateway's CapToken as opaque bytes.
Rule 3: replies are stored under the request's RRPID with the request digest: the same request
again gets the same reply, another request under that RRPID is a replay.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from protocol import codec
from protocol.messages import CurrAmt
from setpay.sqlite import transaction

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS merchants (
    merchant_id TEXT PRIMARY KEY, brand TEXT NOT NULL,
    sig_label TEXT NOT NULL, kx_label TEXT NOT NULL,
    sig_cert BLOB NOT NULL, kx_cert BLOB NOT NULL,
    chain BLOB NOT NULL,            -- msgpack list of CA cert DERs (MCA, Brand)
    root BLOB NOT NULL, bci BLOB, crls BLOB NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gateways (
    brand TEXT PRIMARY KEY, kx_cert BLOB NOT NULL, chain BLOB NOT NULL, added INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    lid_m BLOB PRIMARY KEY, merchant_id TEXT NOT NULL REFERENCES merchants(merchant_id),
    description TEXT NOT NULL, currency TEXT NOT NULL, amount INTEGER NOT NULL,
    sale INTEGER NOT NULL,
    state BLOB NOT NULL,            -- encoded protocol.states.MachineState
    xid BLOB UNIQUE, trans_ids BLOB, chall_c BLOB, chall_m BLOB, pe_thumb BLOB,
    brand TEXT, bin TEXT, preq_digest BLOB, cardholder_thumb BLOB, auth_req BLOB,
    auth_rrpid BLOB, completion INTEGER, auth_code INTEGER, auth_amount INTEGER,
    cap_amount INTEGER, cap_token BLOB, pres_data BLOB,
    created INTEGER NOT NULL, updated INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS replies (
    rrpid BLOB PRIMARY KEY, digest BLOB NOT NULL, reply_type TEXT NOT NULL,
    reply BLOB NOT NULL, created INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class MerchantRow:
    merchant_id: str
    brand: str
    sig_label: str
    kx_label: str
    sig_cert: bytes
    kx_cert: bytes
    chain: list[bytes]
    root: bytes
    bci: bytes | None
    crls: list[bytes]


@dataclass(frozen=True)
class OrderRow:
    lid_m: bytes
    merchant_id: str
    description: str
    amount: CurrAmt
    sale: bool
    state: bytes
    xid: bytes | None
    trans_ids: bytes | None
    chall_c: bytes | None
    chall_m: bytes | None
    pe_thumb: bytes | None
    brand: str | None
    bin: str | None
    preq_digest: bytes | None
    cardholder_thumb: bytes | None
    auth_req: bytes | None
    auth_rrpid: bytes | None
    completion: int | None
    auth_code: int | None
    auth_amount: int | None
    cap_amount: int | None
    cap_token: bytes | None
    pres_data: bytes | None


def _list(data: bytes) -> list[bytes]:
    return list(codec.unpackb(data))


class MerchantStore:
    """One instance's database (Rules 1-3)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, data_dir: Path, instance: str) -> MerchantStore:
        path = Path(data_dir) / "merchant" / f"{instance}.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        return cls(db, path)

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic change (setpay/sqlite.py): committed on exit, rolled back on error."""
        return transaction(self.db)

    # -- merchants and gateways ---------------------------------------------------------------

    def save_merchant(self, row: MerchantRow, now_ms: int) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO merchants VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row.merchant_id, row.brand, row.sig_label, row.kx_label, row.sig_cert,
                    row.kx_cert, codec.packb(row.chain), row.root, row.bci,
                    codec.packb(row.crls), now_ms,
                ),
            )  # fmt: skip

    def merchant(self, merchant_id: str) -> MerchantRow | None:
        r = self.db.execute(
            "SELECT * FROM merchants WHERE merchant_id = ?", (merchant_id,)
        ).fetchone()
        if r is None:
            return None
        return MerchantRow(
            r["merchant_id"], r["brand"], r["sig_label"], r["kx_label"], r["sig_cert"],
            r["kx_cert"], _list(r["chain"]), r["root"], r["bci"], _list(r["crls"]),
        )  # fmt: skip

    def merchant_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT merchant_id FROM merchants ORDER BY 1")]

    def save_gateway(self, brand: str, kx_cert: bytes, chain: list[bytes], now_ms: int) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO gateways VALUES (?,?,?,?)",
                (brand, kx_cert, codec.packb(chain), now_ms),
            )

    def gateway(self, brand: str) -> tuple[bytes, list[bytes]] | None:
        r = self.db.execute("SELECT * FROM gateways WHERE brand = ?", (brand,)).fetchone()
        return None if r is None else (r["kx_cert"], _list(r["chain"]))

    # -- orders ---------------------------------------------------------------------------------

    def add_order(
        self, lid_m: bytes, merchant_id: str, description: str, amount: CurrAmt, sale: bool,
        state: bytes, now_ms: int,
    ) -> None:  # fmt: skip
        with self.transaction() as db:
            db.execute(
                "INSERT INTO orders (lid_m, merchant_id, description, currency, amount, sale,"
                " state, created, updated) VALUES (?,?,?,?,?,?,?,?,?)",
                (lid_m, merchant_id, description, amount.currency, amount.amount, int(sale),
                 state, now_ms, now_ms),
            )  # fmt: skip

    def _order(self, where: str, value: bytes) -> OrderRow | None:
        r = self.db.execute(f"SELECT * FROM orders WHERE {where} = ?", (value,)).fetchone()  # noqa: S608 - column name from code
        if r is None:
            return None
        return OrderRow(
            r["lid_m"], r["merchant_id"], r["description"], CurrAmt(r["currency"], r["amount"]),
            bool(r["sale"]), r["state"], r["xid"], r["trans_ids"], r["chall_c"], r["chall_m"],
            r["pe_thumb"], r["brand"], r["bin"], r["preq_digest"], r["cardholder_thumb"],
            r["auth_req"], r["auth_rrpid"], r["completion"], r["auth_code"], r["auth_amount"],
            r["cap_amount"], r["cap_token"], r["pres_data"],
        )  # fmt: skip

    def order(self, lid_m: bytes) -> OrderRow | None:
        return self._order("lid_m", lid_m)

    def order_by_xid(self, xid: bytes) -> OrderRow | None:
        return self._order("xid", xid)

    def update_order(
        self, db: sqlite3.Connection, lid_m: bytes, now_ms: int, **cols: object
    ) -> None:
        """Set ``cols`` of one order inside the caller's transaction."""
        names = ", ".join(f"{k} = ?" for k in cols)
        db.execute(
            f"UPDATE orders SET {names}, updated = ? WHERE lid_m = ?",  # noqa: S608 - names from code
            (*cols.values(), now_ms, lid_m),
        )

    # -- replies --------------------------------------------------------------------------------

    def reply_for(self, rrpid: bytes) -> tuple[bytes, str, bytes] | None:
        """(request digest, reply type, reply) stored under ``rrpid``."""
        r = self.db.execute("SELECT * FROM replies WHERE rrpid = ?", (rrpid,)).fetchone()
        return None if r is None else (r["digest"], r["reply_type"], r["reply"])

    def save_reply(
        self, db: sqlite3.Connection, rrpid: bytes, digest: bytes, reply_type: str,
        reply: bytes, now_ms: int,
    ) -> None:  # fmt: skip
        db.execute(
            "INSERT INTO replies VALUES (?,?,?,?,?)", (rrpid, digest, reply_type, reply, now_ms)
        )
