"""The POS operator's API over HTTPS (actors/web/ front door), its console page, its client.

Rule 1: operators log in (accounts by `setpay pos operator add`, actors/merchant/operators.py);
a session acts for its operator's one merchant: the merchant is never a request field, so
an operator of one merchant can neither see nor act on another's orders (an order of another
merchant answers 404, exactly like one that does not exist).
Rule 2: an order is what the shop agreed with the cardholder; creating one answers its LID-M
and its pay link (actors/web/paylink.py) to the web wallet, which the cardholder opens to pay.
Rule 3: a refused request is 422 with the ``MerchantError`` text (a SET refusal raised
locally, e.g. ``stateViolation``, is 422 with its code's name); the client raises
``MerchantError``. Nothing here ever holds a PAN (the POS never has one).
Rule 4 (after authorization, actors/merchant/after.py): a transaction is one payment: an
order's own authorization (its id is the order's) or a next shipment's (its own id); capture,
refund, reversal and next shipment name it by id, and the POS acts only if it is the
session's merchant's (another merchant's answers 404, exactly like one that does not exist).
Batches are the session's merchant's: open, close (with the POS's totals), purge, summary
and a page of detail, each a BatchAdminReq to the gateway; the answer carries the totals and,
once the issuer host has reconciled the batch, the settlement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from actors.merchant.after import ItemResult, NextShipment, Payment
from actors.merchant.errors import MerchantError
from actors.merchant.operators import operator
from actors.merchant.service import MerchantService
from actors.merchant.store import OrderRow
from actors.web import paylink
from actors.web.client import ApiError, HttpApi, Token, service_url
from actors.web.paylink import Offer
from actors.web.server import FrontDoor, Refused
from actors.web.sessions import Session, SessionStore
from protocol.errors import ProtocolError
from protocol.messages import (
    AuthCode,
    BatchAdminResData,
    BatchOperation,
    CompletionCode,
    CurrAmt,
)
from protocol.set_error import RemoteError
from setpay.config import Settings

PAGES = Path(__file__).resolve().parent / "page"
S = {"type": "string"}
ORDER_BODY = {"type": "object", "properties": {
    "description": {"type": "string", "minLength": 1, "maxLength": 4096},
    "currency": {"type": "string", "minLength": 3, "maxLength": 3},
    "amount": {"type": "integer", "minimum": 1, "maximum": 10**15},
    "sale": {"type": "boolean"},
    "first_shipment": {"type": "integer", "minimum": 1, "maximum": 10**15},
}, "required": ["description", "currency", "amount"]}  # fmt: skip
ORDER = {
    "type": "object",
    "properties": {
        "order": S,
        "merchant_id": S,
        "description": S,
        "currency": S,
        "amount": {"type": "integer"},
        "sale": {"type": "boolean"},
        "xid": S,
        "state": S,
        "pay_link": S,
        "created_ms": {"type": "integer"},
        "updated_ms": {"type": "integer"},
    },
}
ORDERS = {"type": "object", "properties": {
    "merchant_id": S, "orders": {"type": "array", "items": ORDER}}}  # fmt: skip
AMOUNT = {"type": "integer", "minimum": 1, "maximum": 10**15}
BATCH_ID = {"type": "integer", "minimum": 1, "maximum": 2**31}
CAPTURE_BODY = {"type": "object", "properties": {"amount": AMOUNT, "batch": BATCH_ID}}
REFUND_BODY = {"type": "object", "properties": {"amount": AMOUNT, "batch": BATCH_ID},
               "required": ["amount"]}  # fmt: skip
REVERSE_BODY = {"type": "object", "properties": {
    "what": {"type": "string", "enum": ["authorization", "capture", "credit"]},
    "amount": {"type": "integer", "minimum": 0, "maximum": 10**15},
}, "required": ["what"]}  # fmt: skip
NEXT_BODY = {"type": "object", "properties": {"amount": AMOUNT}, "required": ["amount"]}
BATCH_BODY = {"type": "object", "properties": {
    "operation": {"type": "string", "enum": ["open", "close", "purge", "summary", "detail"]},
    "batch": BATCH_ID, "start": {"type": "integer", "minimum": 0, "maximum": 10**9},
    "max": {"type": "integer", "minimum": 1, "maximum": 1000},
}, "required": ["operation"]}  # fmt: skip
INT = {"type": "integer"}
TRANSACTION = {"type": "object", "properties": {
    "id": S, "order": S, "shipment": {"type": "boolean"}, "state": S, "currency": S,
    "authorized": INT, "captured": INT, "credited": INT, "batch": INT,
    "pending": {"type": "boolean"}}}  # fmt: skip
TRANSACTIONS = {"type": "object", "properties": {
    "merchant_id": S, "transactions": {"type": "array", "items": TRANSACTION}}}  # fmt: skip
RESULT = {"type": "object", "properties": {
    "id": S, "code": S, "ok": {"type": "boolean"}, "amount": INT, "batch": INT,
    "batch_seq": INT, "state": S, "more": {"type": "boolean"}}}  # fmt: skip
BATCH = {"type": "object", "properties": {
    "batch": INT, "status": S, "currency": S, "opened_ms": INT, "closed_ms": INT,
    "debit_count": INT, "debit_amount": INT, "credit_count": INT, "credit_amount": INT,
    "transmission": S, "settlement": {"type": "object"}, "items": {"type": "array"},
    "next": INT}}  # fmt: skip
OPERATIONS = {"open": BatchOperation.OPEN, "close": BatchOperation.CLOSE,
              "purge": BatchOperation.PURGE, "summary": None, "detail": None}  # fmt: skip


def transaction_json(p: Payment) -> dict[str, Any]:
    return {"id": p.lid_m.hex(), "order": (p.parent or p.lid_m).hex(),
            "shipment": p.parent is not None, "state": p.state, "currency": p.currency,
            "authorized": p.authorized, "captured": p.captured, "credited": p.credited,
            "batch": p.batch_id, "pending": p.pending is not None}  # fmt: skip


def result_json(r: ItemResult) -> dict[str, Any]:
    return {"id": r.lid_m.hex(), "code": r.code, "ok": r.ok, "amount": r.amount,
            "batch": r.batch_id, "batch_seq": r.batch_seq, "state": r.state}  # fmt: skip


def batch_json(res: BatchAdminResData) -> dict[str, Any]:
    st = res.batch_status
    out: dict[str, Any] = {
        "batch": res.batch_id, "status": None if res.ba_status is None else res.ba_status.name,
        "transmission": (None if res.transmission_status is None
                         else res.transmission_status.name),
    }  # fmt: skip
    if st is not None:
        out.update(currency=st.currency, opened_ms=st.open_date_time, closed_ms=st.closed_when,
                   debit_count=st.debit_count, debit_amount=st.debit_amount,
                   credit_count=st.credit_count, credit_amount=st.credit_amount)  # fmt: skip
    if res.settlement is not None:
        se = res.settlement
        out["settlement"] = {"amount": se.amount.amount, "currency": se.amount.currency,
                             "type": se.settlement_type, "account": se.account,
                             "deposit_ms": se.deposit_date}  # fmt: skip
    if res.details is not None:
        out["items"] = [{"seq": i.batch_seq, "kind": i.kind.name, "amount": i.amount.amount,
                         "xid": i.trans_ids.xid.hex()} for i in res.details.items]  # fmt: skip
        out["next"] = res.details.next_starting_point
    return out


def order_state(row: OrderRow) -> str:
    """What the console shows: awaiting payment, or COMPLETION/AUTH_CODE as signed."""
    if row.completion is None:
        return "awaiting payment" if row.xid is None else "in progress"
    auth = "-" if row.auth_code is None else AuthCode(row.auth_code).name
    return f"{CompletionCode(row.completion).name}/{auth}"


def front_door(settings: Settings, service: MerchantService, instance: str) -> FrontDoor:
    """The POS's HTTPS API and console page on its store's sessions (Rule 1)."""
    store = service.store
    sessions = SessionStore(
        store.db, lifetime_s=settings.web_session_seconds,
        max_failures=settings.web_max_failures, lockout_s=settings.web_lockout_seconds,
    )  # fmt: skip
    wallet = service_url(settings, "wallet")
    route_key = f"merchant.{instance}"
    pages = {"/": PAGES / "index.html", "/pos.js": PAGES / "pos.js",
             "/pos.css": PAGES / "pos.css"}  # fmt: skip
    door = FrontDoor(settings, name="pos", title="setpay POS", port=settings.pos_web_port,
                     sessions=sessions, lookup=lambda name: operator(store.db, name),
                     refusals=(MerchantError,),
                     pages={k: v for k, v in pages.items() if v.is_file()})  # fmt: skip

    def as_json(row: OrderRow) -> dict[str, Any]:
        link = paylink.make(wallet, Offer(route_key, row.merchant_id, row.lid_m.hex(),
                                          row.description, row.amount.currency,
                                          row.amount.amount))  # fmt: skip
        return {"order": row.lid_m.hex(), "merchant_id": row.merchant_id,
                "description": row.description, "currency": row.amount.currency,
                "amount": row.amount.amount, "sale": row.sale,
                "xid": None if row.xid is None else row.xid.hex(), "state": order_state(row),
                "pay_link": link}  # fmt: skip

    def merchant_of(session: Session | None) -> str:
        assert session is not None
        return session.scope

    @door.route(
        "POST",
        "/api/orders",
        "create an order of my merchant; answers its pay link",
        body=ORDER_BODY,
        response=ORDER,
    )
    async def create(_r: web.Request, s: Session | None, b: dict[str, Any]) -> Any:
        lid_m = service.create_order(merchant_of(s), b["description"],
                                     CurrAmt(b["currency"], b["amount"]),
                                     sale=bool(b.get("sale", False)),
                                     first_shipment=b.get("first_shipment"))  # fmt: skip
        row = store.order(lid_m)
        assert row is not None
        return as_json(row)

    @door.route(
        "GET", "/api/orders", "my merchant's newest orders with their states", response=ORDERS
    )
    async def listing(_r: web.Request, s: Session | None, _b: dict[str, Any]) -> Any:
        merchant_id = merchant_of(s)
        return {"merchant_id": merchant_id,
                "orders": [as_json(r) for r in store.orders_of(merchant_id)]}  # fmt: skip

    @door.route("GET", "/api/orders/{order}", "one order of my merchant", response=ORDER)
    async def one(r: web.Request, s: Session | None, _b: dict[str, Any]) -> Any:
        try:
            lid_m = bytes.fromhex(r.match_info["order"][:128])
        except ValueError:
            raise Refused(404, "no such order") from None
        row = store.order(lid_m)
        if row is None or row.merchant_id != merchant_of(s):
            raise Refused(404, "no such order")  # the same for another merchant's (Rule 1)
        return as_json(row)

    # -- after authorization (Rule 4) -----------------------------------------------------------

    after = service.after

    def mine(r: web.Request, s: Session | None) -> Payment:
        """The session's merchant's transaction named in the path, else 404 (Rule 4)."""
        try:
            lid_m = bytes.fromhex(r.match_info["tx"][:128])
        except ValueError:
            raise Refused(404, "no such transaction") from None
        p = after.payment(lid_m)
        if p is None or p.merchant_id != merchant_of(s):
            raise Refused(404, "no such transaction")
        return p

    async def acting(call: Any) -> Any:
        """Run an after-authorization call; a SET refusal raised here is one 422 line."""
        try:
            return await call
        except ProtocolError as exc:
            raise Refused(422, f"{exc.code.name.lower()}: {exc.detail}") from None
        except RemoteError as exc:
            raise Refused(422, f"the gateway refused: {exc.code.name}") from None

    @door.route("GET", "/api/transactions",
                "my merchant's transactions (authorizations, next shipments) with their money",
                response=TRANSACTIONS)  # fmt: skip
    async def transactions(_r: web.Request, s: Session | None, _b: dict[str, Any]) -> Any:
        merchant_id = merchant_of(s)
        found = {p.lid_m: p for p in after.payments(merchant_id)}
        for row in store.orders_of(merchant_id):
            if row.lid_m not in found and (p := after.payment(row.lid_m)) is not None:
                found[row.lid_m] = p
        return {"merchant_id": merchant_id,
                "transactions": [transaction_json(p) for p in found.values()]}  # fmt: skip

    @door.route("POST", "/api/transactions/{tx}/capture",
                "capture a transaction (its authorized amount, or a part)",
                body=CAPTURE_BODY, response=RESULT)  # fmt: skip
    async def capture(r: web.Request, s: Session | None, b: dict[str, Any]) -> Any:
        p = mine(r, s)
        amounts = None if b.get("amount") is None else [b["amount"]]
        [res] = await acting(after.capture([p.lid_m], amounts, batch_id=b.get("batch")))
        return result_json(res)

    @door.route("POST", "/api/transactions/{tx}/refund", "refund (credit) part of a capture",
                body=REFUND_BODY, response=RESULT)  # fmt: skip
    async def refund(r: web.Request, s: Session | None, b: dict[str, Any]) -> Any:
        p = mine(r, s)
        return result_json(await acting(after.credit(p.lid_m, b["amount"],
                                                     batch_id=b.get("batch"))))  # fmt: skip

    @door.route("POST", "/api/transactions/{tx}/reverse",
                "reverse an authorization (amount: what stays, 0 = all), a capture or a credit",
                body=REVERSE_BODY, response=RESULT)  # fmt: skip
    async def reverse(r: web.Request, s: Session | None, b: dict[str, Any]) -> Any:
        p = mine(r, s)
        what, amount = b["what"], b.get("amount")
        if what == "authorization":
            call = after.reverse_authorization(p.lid_m, amount or 0)
        elif what == "capture":
            call = after.reverse_capture(p.lid_m)
        else:
            if not amount:
                raise Refused(422, "name the credit's amount")
            call = after.reverse_credit(p.lid_m, amount)
        return result_json(await acting(call))

    @door.route("POST", "/api/transactions/{tx}/next",
                "authorize the order's next shipment with its AuthToken",
                body=NEXT_BODY, response=RESULT)  # fmt: skip
    async def next_shipment(r: web.Request, s: Session | None, b: dict[str, Any]) -> Any:
        p = mine(r, s)
        res: NextShipment = await acting(after.authorize_next(p.parent or p.lid_m, b["amount"]))
        return {"id": None if res.lid_m is None else res.lid_m.hex(), "code": res.code,
                "ok": res.ok, "amount": res.amount, "more": res.more}  # fmt: skip

    @door.route("POST", "/api/batches",
                "open, close, purge a batch of my merchant, or its summary or a detail page",
                body=BATCH_BODY, response=BATCH)  # fmt: skip
    async def batches(_r: web.Request, s: Session | None, b: dict[str, Any]) -> Any:
        merchant_id = merchant_of(s)
        op, batch_id = b["operation"], b.get("batch")
        if op != "open" and batch_id is None:
            raise Refused(422, "name the batch")
        detail = (b.get("start", 0), b.get("max", 100)) if op == "detail" else None
        res = await acting(after.batch(merchant_id, OPERATIONS[op], batch_id, summary=True,
                                       detail=detail))  # fmt: skip
        return batch_json(res)

    return door


# -- the operator's thin client ----------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    order: str
    merchant_id: str
    description: str
    currency: str
    amount: int
    sale: bool
    xid: str | None
    state: str
    pay_link: str

    @property
    def lid_m(self) -> bytes:
        return bytes.fromhex(self.order)

    @property
    def offer(self) -> Offer:
        return paylink.parse(self.pay_link)


def _order(d: dict[str, Any]) -> Order:
    return Order(d["order"], d["merchant_id"], d["description"], d["currency"], d["amount"],
                 d["sale"], d["xid"], d["state"], d["pay_link"])  # fmt: skip


class PosClient:
    """The operator's thin client of one POS service; ``login`` opens a ``PosSession``."""

    def __init__(self, http: HttpApi) -> None:
        self.http = http

    @classmethod
    def for_settings(cls, settings: Settings, timeout: float = 30.0) -> PosClient:
        return cls(HttpApi.for_service(settings, "pos", timeout))

    async def close(self) -> None:
        await self.http.close()

    async def login(self, user: str, passphrase: str) -> PosSession:
        try:
            return PosSession(self.http, await self.http.login(user, passphrase))
        except ApiError as exc:
            raise MerchantError(exc.text) from None


class PosSession:
    """One operator's session, acting for the operator's merchant (``merchant_id``)."""

    def __init__(self, http: HttpApi, token: Token) -> None:
        self.http = http
        self.token = token

    @property
    def merchant_id(self) -> str:
        return self.token.scope

    async def _call(self, method: str, path: str, body: Any = None,
                    retry_for: float = 0.0) -> Any:  # fmt: skip
        try:
            return await self.http.call(method, path, body, self.token, retry_for=retry_for)
        except ApiError as exc:
            raise MerchantError(exc.text) from None

    async def create_order(self, description: str, amount: CurrAmt, *, sale: bool = False,
                           first_shipment: int | None = None) -> Order:  # fmt: skip
        body: dict[str, Any] = {"description": description, "currency": amount.currency,
                                "amount": amount.amount, "sale": sale}  # fmt: skip
        if first_shipment is not None:
            body["first_shipment"] = first_shipment
        # sent again while no POS process answers (actors/web/client.py Rule 4): at worst a
        # second order nobody pays, never a second payment
        return _order(await self._call("POST", "/api/orders", body, retry_for=60.0))

    # -- after authorization (Rule 4) --------------------------------------------------------

    async def transactions(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/api/transactions", retry_for=60.0))["transactions"])

    async def capture(self, tx: str, amount: int | None = None,
                      batch: int | None = None) -> dict[str, Any]:  # fmt: skip
        body = {k: v for k, v in (("amount", amount), ("batch", batch)) if v is not None}
        return dict(await self._call("POST", f"/api/transactions/{tx}/capture", body))

    async def refund(self, tx: str, amount: int, batch: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"amount": amount}
        if batch is not None:
            body["batch"] = batch
        return dict(await self._call("POST", f"/api/transactions/{tx}/refund", body))

    async def reverse(self, tx: str, what: str, amount: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"what": what}
        if amount is not None:
            body["amount"] = amount
        return dict(await self._call("POST", f"/api/transactions/{tx}/reverse", body))

    async def next_shipment(self, tx: str, amount: int) -> dict[str, Any]:
        return dict(await self._call("POST", f"/api/transactions/{tx}/next", {"amount": amount}))

    async def batch(self, operation: str, batch: int | None = None, *, start: int = 0,
                    maximum: int = 100) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {"operation": operation}
        if batch is not None:
            body["batch"] = batch
        if operation == "detail":
            body.update(start=start, max=maximum)
        return dict(await self._call("POST", "/api/batches", body))

    async def orders(self) -> list[Order]:
        return [_order(d) for d in (await self._call("GET", "/api/orders"))["orders"]]

    async def order(self, order: str) -> Order:
        return _order(await self._call("GET", f"/api/orders/{order}"))

    async def logout(self) -> None:
        await self._call("POST", "/api/logout")
