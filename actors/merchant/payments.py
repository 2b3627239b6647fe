"""The POS database's records after authorization (a component of the merchant store,
actors/merchant/store.py): payments, the requests sent for them, the batches' last status.

Rule 1: never a PAN: amounts, states, ids, the gateway's CapToken as opaque bytes (sealed to
the gateway), and the POS's own signed requests.
Rule 2: a request is stored before it is sent and its answer when it comes
(actors/merchant/after.py Rule 2).
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from alembic.operations import Operations

from setpay.store import Schema

_MD = sa.MetaData()
B, T, I = sa.LargeBinary, sa.String, sa.BigInteger  # noqa: E741 - column type shorthands
PAYMENTS: Final = sa.Table(
    "payments", _MD,
    sa.Column("lid_m", B, primary_key=True),
    sa.Column("merchant_id", T(64), nullable=False, index=True),
    sa.Column("state", T(32), nullable=False),
    sa.Column("currency", T(8), nullable=False),
    sa.Column("authorized", I, nullable=False),
    sa.Column("captured", I, nullable=False),
    sa.Column("credited", I, nullable=False),
    sa.Column("cap_token", B, nullable=False),  # opaque: sealed to the gateway (Rule 3)
    sa.Column("cap_payload", B),  # the capture as sent (CapRev/Cred items repeat it)
    sa.Column("batch_id", I),
    sa.Column("pending", B),  # the RRPID of the request in flight
    sa.Column("updated", I, nullable=False),
    # a next shipment's authorization (AuthToken): its own AuthRRPID, the purchase's TransIDs
    # and the order it ships (``parent``); NULL for an order's own authorization
    sa.Column("auth_rrpid", B),
    sa.Column("trans_ids", B),
    sa.Column("parent", B, index=True),
)  # fmt: skip
REQUESTS: Final = sa.Table(
    "after_requests", _MD,
    sa.Column("rrpid", B, primary_key=True),
    sa.Column("merchant_id", T(64), nullable=False),
    sa.Column("msg_type", sa.Integer, nullable=False),
    sa.Column("lid_ms", B, nullable=False),  # msgpack list of the payments it names
    sa.Column("request", B, nullable=False),
    sa.Column("answer", B),  # the opened answer's data record, encoded
    sa.Column("created", I, nullable=False),
)  # fmt: skip
BATCHES: Final = sa.Table(
    "batches", _MD,
    sa.Column("merchant_id", T(64), primary_key=True),
    sa.Column("batch_id", I, primary_key=True),
    sa.Column("last", B, nullable=False),  # the newest BatchAdminResData
    sa.Column("updated", I, nullable=False),
)  # fmt: skip


def _v2_shipments(op: Operations) -> None:
    for name in ("auth_rrpid", "trans_ids", "parent"):
        op.add_column("payments", sa.Column(name, B))
    op.create_index("ix_payments_parent", "payments", ["parent"])


SCHEMA: Final = Schema("merchant_after", _MD, steps=(_v2_shipments,))
