"""The wallet's thin-client API over HTTPS (actors/web/ front door), its page, and its client.

Rule 1: the API is JSON over the wallet's HTTPS front door (``wallet_web_port``): sessions,
CSRF, lockout and OpenAPI come from actors/web/server.py; binary values travel as hex (ids)
or base64 (certificates, seals). ``POST /api/register`` creates a cardholder (one scrypt, off
the event loop); every other operation acts for the session's cardholder only, with no
passphrase and no scrypt.
Rule 2: a wallet refusal is 422 with the ``WalletError`` text (no PAN, passphrase or secret);
the client raises it as ``WalletError`` (401 as ``AuthenticationFailed``).
Rule 3: a passphrase or PAN never appears in a repr, log line or error text.
Rule 4: OPE PIN debit: starting a purchase answers the XID, the gateway certificates and (PIN
accounts only, to the authenticated cardholder) the digits the PIN block binds; the thin
client (this module's ``seal_for``, or the page's script in the browser) validates the
gateway certificate to the root it trusts, seals the PIN itself and sends only the seal.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509

from actors.wallet import purchase
from actors.wallet.errors import IN_PROGRESS, AuthenticationFailed, WalletError
from actors.wallet.service import PurchaseResult, WalletService
from actors.web.client import ApiError, HttpApi, Token
from actors.web.paylink import Offer
from actors.web.server import NAME, PASSPHRASE, FrontDoor, Refused
from actors.web.sessions import Session, SessionStore
from protocol import pan
from protocol.certs import cert_thumbprint, load_certificate, public_key_of
from protocol.dualsig import MAX_PIN_SEAL
from protocol.errors import ProtocolError
from protocol.keys import suite_for_public_key
from protocol.messages import AuthCode, CompletionCode, CurrAmt
from protocol.pin import seal_pin, validate_pin
from setpay.clock import CLOCK
from setpay.config import Settings
from setpay.logs import get_logger

log = get_logger(component="wallet.api")
PAGES = Path(__file__).resolve().parent / "page"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, f"{what}: not base64") from None


def _unhex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise Refused(400, f"{what}: not hex") from None


def _outcome(r: PurchaseResult) -> dict[str, Any]:
    out = Outcome(r.xid, int(r.completion), r.auth_code)
    return {"xid": r.xid.hex(), "completion": int(r.completion), "auth_code": r.auth_code,
            "outcome": out.describe()}  # fmt: skip


S = {"type": "string"}
HEXID = {"type": "string", "minLength": 2, "maxLength": 128}
ENROLL_BODY = {"type": "object", "properties": {
    "brand": NAME, "number": {"type": "string", "minLength": 1, "maxLength": 34},
    "expiry": {"type": "string", "minLength": 4, "maxLength": 4},
    "form": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 256}},
    "pin_account": {"type": "boolean"},
    "bank_code": {"type": "string", "maxLength": 11},
    "branch": {"type": "string", "maxLength": 8},
}, "required": ["brand", "number", "expiry"]}  # fmt: skip
START_BODY = {"type": "object", "properties": {
    "card_id": NAME, "merchant": NAME, "order": HEXID,
    "description": {"type": "string", "minLength": 1, "maxLength": 4096},
    "currency": {"type": "string", "minLength": 3, "maxLength": 3},
    "amount": {"type": "integer", "minimum": 1, "maximum": 10**15},
    "merchant_id": NAME,
}, "required": ["card_id", "merchant", "order", "description", "currency", "amount"]}  # fmt: skip
FINISH_BODY = {"type": "object", "properties": {
    "pin_seal": {"type": "string", "maxLength": MAX_PIN_SEAL * 2, "nullable": True}}}
INQUIRE_BODY = {"type": "object", "properties": {"xid": HEXID}, "required": ["xid"]}
OUTCOME = {"type": "object", "properties": {"xid": S, "completion": {"type": "integer"},
           "auth_code": {"type": "integer"}, "outcome": S}}  # fmt: skip
STARTED = {"type": "object", "properties": {
    "purchase_id": S, "xid": S, "gateway_cert": S, "brand": S,
    "certs": {"type": "array", "items": S}, "crls": {"type": "array", "items": S},
    "bci": S, "pin_binding": S, "oaep_hash": S}}  # fmt: skip
CARDS = {"type": "object", "properties": {"cards": {"type": "array", "items": {
    "type": "object", "properties": {"card_id": S, "brand": S, "hint": S,
                                     "pin": {"type": "boolean"}}}}}}  # fmt: skip


def front_door(settings: Settings, service: WalletService) -> FrontDoor:
    """The wallet's HTTPS API and page on its store's sessions (Rule 1)."""
    sessions = SessionStore(
        service.store.db, lifetime_s=settings.web_session_seconds,
        max_failures=settings.web_max_failures, lockout_s=settings.web_lockout_seconds,
    )  # fmt: skip

    def lookup(user: str) -> tuple[Any, str] | None:
        record = service.store.cardholder(user)
        return None if record is None else (record, "")

    pages = {"/": PAGES / "index.html", "/wallet.js": PAGES / "wallet.js",
             "/wallet.css": PAGES / "wallet.css"}  # fmt: skip
    door = FrontDoor(settings, name="wallet", title="setpay wallet",
                     port=settings.wallet_web_port,
                     sessions=sessions, lookup=lookup, refusals=(WalletError,),
                     pages={k: v for k, v in pages.items() if v.is_file()})  # fmt: skip
    route = door.route

    def who(session: Session | None) -> str:
        assert session is not None
        return session.principal

    @route("POST", "/api/register", "create a cardholder (then log in)", auth=False,
           per_source=settings.web_source_registrations,
           body={"type": "object", "properties": {"user": NAME, "passphrase": PASSPHRASE},
                 "required": ["user", "passphrase"]})  # fmt: skip
    async def register(_r: web.Request, _s: Session | None, b: dict[str, Any]) -> Any:
        await asyncio.to_thread(service.register, b["user"], b["passphrase"])
        return {"user": b["user"]}

    @route("GET", "/api/cards", "this cardholder's cards", response=CARDS)
    async def cards(_r: web.Request, s: Session | None, _b: dict[str, Any]) -> Any:
        return {"cards": [{"card_id": c.card_id, "brand": c.brand, "hint": c.hint,
                           "pin": c.pin} for c in service.cards(who(s))]}  # fmt: skip

    @route("POST", "/api/cards", "enrol a card or (bank_code) an OPE bank account with the CA",
           body=ENROLL_BODY, response={"type": "object", "properties": {"card_id": S}})
    async def enroll(_r: web.Request, s: Session | None, b: dict[str, Any]) -> Any:
        bank = b.get("bank_code", "")
        kind = pan.AccountKind.BANK if bank else pan.AccountKind.CARD
        account = pan.Account(kind, b["number"], bank, b.get("branch", ""))
        card_id = await service.enroll(
            who(s), brand=b["brand"], account=account, expiry=b["expiry"],
            values=dict(b.get("form", {})), pin_account=bool(b.get("pin_account", False)),
        )  # fmt: skip
        return {"card_id": card_id}

    @route("POST", "/api/purchases", "start a purchase (PInit) of a pay link's order",
           body=START_BODY, response=STARTED)
    async def start(_r: web.Request, s: Session | None, b: dict[str, Any]) -> Any:
        offer = Offer(b["merchant"], b.get("merchant_id", "?"), b["order"].lower(),
                      b["description"], b["currency"], b["amount"])  # fmt: skip
        try:
            offer.check()
        except ValueError as exc:
            raise Refused(400, str(exc)) from None
        st = await service.start_purchase(
            who(s), card_id=b["card_id"], merchant=offer.merchant,
            lid_m=_unhex(offer.order, "order"), description=offer.description,
            amount=CurrAmt(offer.currency, offer.amount),
        )  # fmt: skip
        return {"purchase_id": st.purchase_id, "xid": st.xid.hex(),
                "gateway_cert": _b64(st.gateway_cert), "brand": st.brand,
                "certs": [_b64(c) for c in st.certs], "crls": [_b64(c) for c in st.crls],
                "bci": None if st.bci is None else _b64(st.bci),
                "pin_binding": st.pin_binding, "oaep_hash": st.oaep_hash}  # fmt: skip

    @route("POST", "/api/purchases/{purchase_id}/finish",
           "finish a started purchase (PReq -> PRes), with the PIN seal a PIN account needs",
           body=FINISH_BODY, response=OUTCOME)  # fmt: skip
    async def finish(r: web.Request, s: Session | None, b: dict[str, Any]) -> Any:
        seal = b.get("pin_seal")
        sealed = None if seal is None else _unb64(seal, "pin_seal")
        if sealed is not None and len(sealed) > MAX_PIN_SEAL:
            raise Refused(400, "pin_seal: too long")
        pid = r.match_info["purchase_id"][:64]
        return _outcome(await service.finish_purchase(who(s), pid, sealed))

    @route("POST", "/api/inquiries", "ask the merchant about one of my purchases (InqReq)",
           body=INQUIRE_BODY, response=OUTCOME)
    async def inquire(_r: web.Request, s: Session | None, b: dict[str, Any]) -> Any:
        return _outcome(await service.inquire(who(s), _unhex(b["xid"], "xid")))

    return door


# -- the thin client ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardEntry:
    card_id: str
    brand: str
    hint: str
    pin: bool = False


@dataclass(frozen=True, slots=True)
class StartedPurchase:
    """A started purchase: the id finishing names, the XID and the gateway certificates the
    PIN seal is made for (service.Started)."""

    purchase_id: str
    xid: bytes
    gateway_cert: bytes
    brand: str
    certs: list[bytes]
    crls: list[bytes]
    bci: bytes | None
    pin_binding: str | None = field(default=None, repr=False)
    oaep_hash: str = "sha1"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A purchase's outcome as the merchant signed it: completion and authorization code."""

    xid: bytes
    completion: int
    auth_code: int | None

    @property
    def completion_code(self) -> CompletionCode:
        return CompletionCode(self.completion)

    def describe(self) -> str:
        """``COMPLETION/AUTH_CODE`` as the merchant signed it (what clients print)."""
        auth = "-" if self.auth_code is None else AuthCode(self.auth_code).name
        return f"{self.completion_code.name}/{auth}"


async def seal_for(
    started: StartedPurchase,
    root: x509.Certificate,
    pin: str,
    now_ms: int | None = None,
    floor: purchase.BciFloor | None = None,
) -> bytes:
    """Thin client (Rule 4): validate the gateway certificate ``started`` names to ``root``
    with the BCI/CRLs the merchant sent (no older BCI than ``floor`` has seen: purchase Rule
    4), then seal the format 0 block of ``pin`` to it for this XID. Raises ``WalletError``
    (no PIN in its text)."""
    if started.pin_binding is None:
        raise WalletError("this card takes no PIN")
    now = CLOCK.now_ms() if now_ms is None else now_ms
    try:
        validate_pin(pin)
        gateway = purchase.validate_gateway(
            root, started.brand, started.certs, started.bci, started.crls,
            cert_thumbprint(load_certificate(started.gateway_cert)), now, floor,
        )  # fmt: skip
        public = public_key_of(gateway)
        return await seal_pin(
            suite_for_public_key(public, started.oaep_hash), public, cert_thumbprint(gateway),
            started.xid, pin, started.pin_binding,
        )  # fmt: skip
    except ProtocolError as exc:
        raise WalletError(f"PIN not sealed: {exc.code.name}") from None


def _outcome_of(data: dict[str, Any]) -> Outcome:
    return Outcome(bytes.fromhex(data["xid"]), int(data["completion"]), data["auth_code"])


class WalletClient:
    """The cardholder's thin client of one wallet service (Rule 2): ``login`` opens a
    ``WalletSession`` that every operation then uses."""

    def __init__(self, http: HttpApi) -> None:
        self.http = http

    @classmethod
    def for_settings(cls, settings: Settings, timeout: float = 60.0) -> WalletClient:
        return cls(HttpApi.for_service(settings, "wallet", timeout))

    async def close(self) -> None:
        await self.http.close()

    async def register(self, user: str, passphrase: str) -> None:
        await _call(self.http, "POST", "/api/register", {"user": user, "passphrase": passphrase})

    async def login(self, user: str, passphrase: str) -> WalletSession:
        try:
            return WalletSession(self.http, await self.http.login(user, passphrase))
        except ApiError as exc:
            raise _error(exc) from None


def _error(exc: ApiError) -> WalletError:
    return AuthenticationFailed(exc.text) if exc.status == 401 else WalletError(exc.text)


async def _call(http: HttpApi, method: str, path: str, body: Any = None,
                token: Token | None = None, retry_for: float = 0.0) -> Any:  # fmt: skip
    try:
        return await http.call(method, path, body, token, retry_for=retry_for)
    except ApiError as exc:
        raise _error(exc) from None


# How long a thin client keeps asking a wallet it cannot reach, or that says another of its
# processes is finishing the purchase (client Rule 4): past the lease a dead process held.
RETRY_SECONDS = 90.0


class WalletSession:
    """One cardholder's session: one method per API operation; failures are WalletError."""

    def __init__(self, http: HttpApi, token: Token) -> None:
        self.http = http
        self.token = token
        self.floor = purchase.BciFloor()  # the newest BCI seen per brand this session

    @property
    def user(self) -> str:
        return self.token.user

    async def _call(self, method: str, path: str, body: Any = None,
                    retry_for: float = 0.0) -> Any:  # fmt: skip
        return await _call(self.http, method, path, body, self.token, retry_for)

    async def logout(self) -> None:
        await self._call("POST", "/api/logout")

    async def enroll(
        self, *, brand: str, number: str, expiry: str, form: dict[str, str],
        pin_account: bool = False, bank_code: str = "", branch: str = "",
    ) -> str:  # fmt: skip
        """Register a card (or, with ``bank_code``, an OPE bank account ``number``) with the CA
        through the wallet; returns the card id."""
        body = {"brand": brand, "number": number, "expiry": expiry, "form": form,
                "pin_account": pin_account, "bank_code": bank_code, "branch": branch}  # fmt: skip
        return str((await self._call("POST", "/api/cards", body))["card_id"])

    async def cards(self) -> list[CardEntry]:
        data = await self._call("GET", "/api/cards", retry_for=RETRY_SECONDS)
        return [CardEntry(c["card_id"], c["brand"], c["hint"], c["pin"]) for c in data["cards"]]

    async def start_purchase(self, *, card_id: str, offer: Offer) -> StartedPurchase:
        """PInit for the pay link's order ``offer``: purchase id, XID, gateway certificates."""
        body = {"card_id": card_id, "merchant": offer.merchant, "order": offer.order,
                "merchant_id": offer.merchant_id, "description": offer.description,
                "currency": offer.currency, "amount": offer.amount}  # fmt: skip
        d = await self._call("POST", "/api/purchases", body, retry_for=RETRY_SECONDS)
        unb = base64.b64decode
        return StartedPurchase(
            d["purchase_id"], bytes.fromhex(d["xid"]), unb(d["gateway_cert"]), d["brand"],
            [unb(c) for c in d["certs"]], [unb(c) for c in d["crls"]],
            None if d["bci"] is None else unb(d["bci"]), d["pin_binding"], d["oaep_hash"],
        )  # fmt: skip

    async def finish_purchase(self, purchase_id: str, pin_seal: bytes | None = None) -> Outcome:
        """PReq for a started purchase, with the PIN seal a PIN account needs."""
        body = {"pin_seal": None if pin_seal is None else _b64(pin_seal)}
        path = f"/api/purchases/{purchase_id}/finish"
        deadline = time.monotonic() + RETRY_SECONDS
        delay = 0.2
        while True:
            try:  # a wallet process died finishing it: another takes over after its lease
                return _outcome_of(await self._call("POST", path, body, retry_for=RETRY_SECONDS))
            except WalletError as exc:
                if str(exc) != IN_PROGRESS or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def buy(self, *, card_id: str, offer: Offer) -> Outcome:
        """Pay for ``offer`` with card ``card_id`` (a card that takes no PIN)."""
        started = await self.start_purchase(card_id=card_id, offer=offer)
        return await self.finish_purchase(started.purchase_id)

    async def buy_with_pin(self, *, root: x509.Certificate, pin: str | None, card_id: str,
                           offer: Offer) -> Outcome:  # fmt: skip
        """start -> (PIN account: validate the gateway certificate to ``root`` and seal ``pin``
        here, in the thin client) -> finish."""
        started = await self.start_purchase(card_id=card_id, offer=offer)
        seal = None
        if started.pin_binding is not None:
            if pin is None:
                raise WalletError("this card is a PIN account: a PIN is needed")
            seal = await seal_for(started, root, pin, floor=self.floor)
        return await self.finish_purchase(started.purchase_id, seal)

    async def inquire(self, xid: bytes) -> Outcome:
        return _outcome_of(await self._call("POST", "/api/inquiries", {"xid": xid.hex()}))

