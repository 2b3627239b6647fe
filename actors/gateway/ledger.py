"""The gateway's durable authorization ledger (setpay/store.py), one per gateway instance.

Rule 1: one row per AuthReq RRPID: the request digest, XID, PI id, merchant id, amounts, host
RRN and codes; the exact AuthRes bytes answered live in the shared reply store
(``setpay.store.ReplyStore``) under the same RRPID, written in the same transaction. Never a
PAN, expiry, PANSecret or PIN: the PI id is a labelled digest of the PIHead
(which holds no account data).
Rule 2: ``reserve`` is the one place a PI becomes used: inserting the row with its PI id
fails if another RRPID holds that PI (``PiUsed``); the same RRPID finds its own row again
(a redelivery resumes it). ``finish`` stores the answer once; later finishes keep the first.
Rule 3: a retryable outcome (host unreachable or late) releases the PI id, so the merchant
may try the same purchase again under a new RRPID; the old RRPID keeps its stored answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import sqlalchemy as sa

from actors.gateway.errors import GatewayError
from setpay.store import REPLIES, Connection, IntegrityError, ReplyStore, Schema, open_store

_MD = sa.MetaData()
AUTHS: Final = sa.Table(
    "auths",
    _MD,
    sa.Column("rrpid", sa.LargeBinary, primary_key=True),
    sa.Column("request_digest", sa.LargeBinary, nullable=False),
    sa.Column("xid", sa.LargeBinary, nullable=False, index=True),
    sa.Column("pi_id", sa.LargeBinary, unique=True),
    sa.Column("merchant_id", sa.String(64), nullable=False),
    sa.Column("currency", sa.String(8), nullable=False),
    sa.Column("req_amount", sa.BigInteger, nullable=False),
    sa.Column("capture_now", sa.Boolean, nullable=False),
    sa.Column("rrn", sa.String(12)),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("auth_code", sa.Integer),
    sa.Column("auth_amount", sa.BigInteger),
    sa.Column("response_code", sa.String(4)),
    sa.Column("approval_code", sa.String(8)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.CheckConstraint("state IN ('pending', 'done')", name="auths_state"),
)
SCHEMA: Final = Schema("gateway_ledger", _MD)

_R = REPLIES.metadata.tables["replies"]
# Statements built once, compiled once per ledger (``Store.prepare``): the hot path only binds.
# fmt: off
_GET: Final = (
    sa.select(
        AUTHS.c.rrpid, AUTHS.c.request_digest, AUTHS.c.xid, AUTHS.c.state, AUTHS.c.rrn,
        _R.c.reply_type, _R.c.reply,
    )
    .select_from(AUTHS.outerjoin(_R, _R.c.request_id == AUTHS.c.rrpid))
    .where(AUTHS.c.rrpid == sa.bindparam("rrpid"))
)
# fmt: on
_FINISH: Final = (
    sa.update(AUTHS)
    .where(AUTHS.c.rrpid == sa.bindparam("key"), AUTHS.c.state == "pending")
    .values(
        state="done",
        auth_code=sa.bindparam("auth_code"),
        auth_amount=sa.bindparam("auth_amount"),
        response_code=sa.bindparam("response_code"),
        approval_code=sa.bindparam("approval_code"),
        pi_id=sa.case((sa.bindparam("release", type_=sa.Boolean), None), else_=AUTHS.c.pi_id),
        updated_at=sa.bindparam("now"),
    )
    .returning(AUTHS.c.request_digest, AUTHS.c.xid, AUTHS.c.rrn)
)
_NEW_COLUMNS: Final = (
    "rrpid", "request_digest", "xid", "pi_id", "merchant_id", "currency", "req_amount",
    "capture_now", "rrn", "state", "created_at", "updated_at",
)  # fmt: skip
_COUNT: Final = sa.select(sa.func.count()).select_from(AUTHS)


class PiUsed(GatewayError):
    """The PI was already used by another authorization request."""


@dataclass(frozen=True, slots=True)
class Entry:
    rrpid: bytes
    request_digest: bytes
    xid: bytes
    state: str
    rrn: str | None
    reply_type: str | None
    reply: bytes | None


@dataclass(frozen=True, slots=True)
class NewAuth:
    """What ``reserve`` records before the host is asked."""

    rrpid: bytes
    request_digest: bytes
    xid: bytes
    pi_id: bytes | None
    merchant_id: str
    currency: str
    req_amount: int
    capture_now: bool
    rrn: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``finish`` records: codes and the exact reply."""

    auth_code: int
    auth_amount: int
    response_code: str | None
    approval_code: str | None
    reply_type: str
    reply: bytes
    release_pi: bool = False


class Ledger:
    """Authorization records of one gateway instance."""

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        group_commit: bool = False,
    ) -> None:
        """``group_commit``: the running gateway's (setpay/store.py Rule 5)."""
        self.db = open_store(path, [SCHEMA, REPLIES], group_commit=group_commit)
        self.path = Path(path) if self.db.path is None else self.db.path
        self.clock = clock
        self.replies = ReplyStore(self.db)
        self._insert = self.db.prepare(
            self.db.insert_ignore(AUTHS).values({k: sa.bindparam(k) for k in _NEW_COLUMNS})
        )
        self._get = self.db.prepare(_GET)
        self._finish = self.db.prepare(_FINISH)

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> AbstractContextManager[Connection]:
        """One atomic change (setpay/store.py): committed on exit, rolled back on error."""
        return self.db.transaction()

    def get(self, rrpid: bytes) -> Entry | None:
        with self.db.read() as db:
            rows, _ = self._get.run(db, {"rrpid": rrpid})
        return Entry(*rows[0]) if rows else None

    def reserve(self, auth: NewAuth) -> Entry:
        """Record the request (Rule 2); the existing entry if this RRPID has one.
        Raises ``PiUsed`` when another RRPID holds the PI."""
        now = self.clock()
        with self._tx() as db:
            try:
                # One statement on the hot path: a redelivered RRPID is skipped (no row
                # returned); a PI held by another RRPID still violates ``pi_id UNIQUE``.
                new, _ = self._insert.run(
                    db,
                    {
                        "rrpid": auth.rrpid,
                        "request_digest": auth.request_digest,
                        "xid": auth.xid,
                        "pi_id": auth.pi_id,
                        "merchant_id": auth.merchant_id,
                        "currency": auth.currency,
                        "req_amount": auth.req_amount,
                        "capture_now": auth.capture_now,
                        "rrn": auth.rrn,
                        "state": "pending",
                        "created_at": now,
                        "updated_at": now,
                    },
                )
            except IntegrityError:
                raise PiUsed("PI already used by another request") from None
            if not new:  # this RRPID's row exists already: a redelivery resumes it
                return Entry(*self._get.run(db, {"rrpid": auth.rrpid})[0][0])
        return Entry(auth.rrpid, auth.request_digest, auth.xid, "pending", auth.rrn, None, None)

    def finish(self, rrpid: bytes, outcome: Outcome) -> Entry:
        """Store the answer of a pending entry; an entry already done keeps its answer."""
        now = self.clock()
        with self._tx() as db:
            done, _ = self._finish.run(
                db,
                {
                    "key": rrpid,
                    "auth_code": outcome.auth_code,
                    "auth_amount": outcome.auth_amount,
                    "response_code": outcome.response_code,
                    "approval_code": outcome.approval_code,
                    "release": outcome.release_pi,
                    "now": now,
                },
            )
            if not done:  # already done (or unknown): the first answer stands
                rows, _ = self._get.run(db, {"rrpid": rrpid})
                if not rows:
                    raise KeyError(rrpid.hex())
                return Entry(*rows[0])
            digest, xid, rrn = done[0]
            self.replies.save(db, rrpid, digest, outcome.reply_type, outcome.reply, int(now * 1000))
        return Entry(rrpid, digest, xid, "done", rrn, outcome.reply_type, outcome.reply)

    def count(self) -> int:
        return int(self.db.scalar(_COUNT))
