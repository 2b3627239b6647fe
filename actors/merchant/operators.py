"""POS operator accounts: who may log in to a merchant's console, bound to one merchant.

Rule 1: an operator is a name, the one hosted merchant it acts for, and a passphrase kept as
an scrypt hash (actors/web/passwords.py); created by `setpay pos operator add`, never by the
API. Rule 2: a schema component of the POS's own store (``OPERATORS``), beside the front
door's sessions.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

from actors.merchant.errors import MerchantError
from actors.web.passwords import PassphraseRecord, new_passphrase_record
from setpay.store import Schema, Store

_MD = sa.MetaData()
OPERATORS_TABLE: Final = sa.Table(
    "operators", _MD,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("merchant_id", sa.String(64), nullable=False),
    sa.Column("salt", sa.LargeBinary, nullable=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
)  # fmt: skip
OPERATORS: Final = Schema("operators", _MD)


def add_operator(db: Store, name: str, merchant_id: str, passphrase: str, now_ms: int,
                 *, replace: bool = False) -> None:  # fmt: skip
    """A new operator of ``merchant_id`` (Rule 1); ``replace`` sets a new passphrase."""
    if not 1 <= len(name) <= 64:
        raise MerchantError("operator name must be 1-64 characters")
    try:
        salt, digest, n = new_passphrase_record(passphrase)
    except ValueError as exc:
        raise MerchantError(str(exc)) from None
    values = {"name": name, "merchant_id": merchant_id, "salt": salt, "hash": digest, "n": n,
              "created": now_ms}  # fmt: skip
    with db.transaction() as conn:
        if replace:
            conn.execute(db.upsert(OPERATORS_TABLE, values))
        elif conn.execute(db.insert_ignore(OPERATORS_TABLE), values).first() is None:
            raise MerchantError(f"operator {name!r} exists")


def operator(db: Store, name: str) -> tuple[PassphraseRecord, str] | None:
    """(passphrase record, merchant id) of operator ``name``, or None."""
    o = OPERATORS_TABLE.c
    r = db.one(sa.select(o.salt, o.hash, o.n, o.merchant_id).where(o.name == name))
    return None if r is None else ((r[0], r[1], r[2]), r[3])
