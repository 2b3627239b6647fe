"""The POS operator's API over HTTPS (actors/web/ front door), its console page, its client.

Rule 1: operators log in (accounts by `setpay pos operator add`, actors/merchant/operators.py);
a session acts for its operator's one merchant: the merchant is never a request field, so
an operator of one merchant can neither see nor act on another's orders (an order of another
merchant answers 404, exactly like one that does not exist).
Rule 2: an order is what the shop agreed with the cardholder; creating one answers its LID-M
and its pay link (actors/web/paylink.py) to the web wallet, which the cardholder opens to pay.
Rule 3: a refused request is 422 with the ``MerchantError`` text; the client raises
``MerchantError``. Nothing here ever holds a PAN (the POS never has one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from actors.merchant.errors import MerchantError
from actors.merchant.operators import operator
from actors.merchant.service import MerchantService
from actors.merchant.store import OrderRow
from actors.web import paylink
from actors.web.client import ApiError, HttpApi, Token, service_url
from actors.web.paylink import Offer
from actors.web.server import FrontDoor, Refused
from actors.web.sessions import Session, SessionStore
from protocol.messages import AuthCode, CompletionCode, CurrAmt
from setpay.config import Settings

PAGES = Path(__file__).resolve().parent / "page"
S = {"type": "string"}
ORDER_BODY = {"type": "object", "properties": {
    "description": {"type": "string", "minLength": 1, "maxLength": 4096},
    "currency": {"type": "string", "minLength": 3, "maxLength": 3},
    "amount": {"type": "integer", "minimum": 1, "maximum": 10**15},
    "sale": {"type": "boolean"},
}, "required": ["description", "currency", "amount"]}  # fmt: skip
ORDER = {"type": "object", "properties": {
    "order": S, "merchant_id": S, "description": S, "currency": S,
    "amount": {"type": "integer"}, "sale": {"type": "boolean"}, "xid": S, "state": S,
    "pay_link": S, "created_ms": {"type": "integer"}, "updated_ms": {"type": "integer"}}}
ORDERS = {"type": "object", "properties": {
    "merchant_id": S, "orders": {"type": "array", "items": ORDER}}}  # fmt: skip


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

    @door.route("POST", "/api/orders", "create an order of my merchant; answers its pay link",
                body=ORDER_BODY, response=ORDER)
    async def create(_r: web.Request, s: Session | None, b: dict[str, Any]) -> Any:
        lid_m = service.create_order(merchant_of(s), b["description"],
                                     CurrAmt(b["currency"], b["amount"]),
                                     sale=bool(b.get("sale", False)))  # fmt: skip
        row = store.order(lid_m)
        assert row is not None
        return as_json(row)

    @door.route("GET", "/api/orders", "my merchant's newest orders with their states",
                response=ORDERS)
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

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return await self.http.call(method, path, body, self.token)
        except ApiError as exc:
            raise MerchantError(exc.text) from None

    async def create_order(self, description: str, amount: CurrAmt, *,
                           sale: bool = False) -> Order:  # fmt: skip
        body = {"description": description, "currency": amount.currency,
                "amount": amount.amount, "sale": sale}  # fmt: skip
        return _order(await self._call("POST", "/api/orders", body))

    async def orders(self) -> list[Order]:
        return [_order(d) for d in (await self._call("GET", "/api/orders"))["orders"]]

    async def order(self, order: str) -> Order:
        return _order(await self._call("GET", f"/api/orders/{order}"))

    async def logout(self) -> None:
        await self._call("POST", "/api/logout")
