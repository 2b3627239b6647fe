"""The wallet's thin-client API: enroll, cards, buy and inquire over an RPC queue.

Rule 1: the API is the RPC queue ``wallet.<instance>.api`` (broker/rpc.py: direct reply-to,
not traced); requests and replies are codec records, decoded strictly.
Rule 2: every call carries the cardholder's user name and passphrase; the service checks them
before it touches a card (actors/wallet/service.py Rule 1). The first ``enroll`` of an unknown
user name creates that cardholder with the passphrase given.
Rule 3: a failure is answered as ``ApiReply(ok=False, error=...)`` with the ``WalletError``
text (no PAN, passphrase or secret); the client raises it as ``WalletError``.
Rule 4: a passphrase or PAN never appears in a repr, log line or error text.
Rule 5: OPE PIN debit: START answers the XID, the gateway certificates and (PIN accounts only,
to the authenticated cardholder, like ENROLL's card number) the digits the PIN block binds;
the thin client validates the gateway certificate to the root it trusts, seals the PIN with
``pin.seal_pin`` itself (``seal_for``) and sends only the seal with FINISH.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated

from cryptography import x509

from actors.wallet import purchase
from actors.wallet.errors import AuthenticationFailed, WalletError
from actors.wallet.service import WalletService
from broker.connection import Bus
from broker.errors import BrokerError
from broker.rpc import RpcClient, RpcRequest, RpcServer, serve_rpc
from protocol import codec, ids, pan
from protocol.certs import cert_thumbprint, load_certificate, public_key_of
from protocol.codec import MaxLen
from protocol.dualsig import MAX_PIN_SEAL
from protocol.errors import ProtocolError
from protocol.keys import suite_for_public_key
from protocol.messages import (
    AuthCode,
    BCIBytes,
    CertDER,
    CertList,
    CompletionCode,
    CRLList,
    CurrAmt,
)
from protocol.pin import seal_pin, validate_pin
from setpay.logs import get_logger

log = get_logger(component="wallet.api")

Name = Annotated[str, MaxLen(64)]
Text = Annotated[str, MaxLen(4096)]


def api_queue(instance: str) -> str:
    """The RPC queue of wallet instance ``instance`` (Rule 1)."""
    return f"wallet.{instance}.api"


class ApiOp(StrEnum):
    ENROLL = "enroll"
    CARDS = "cards"
    BUY = "buy"
    START = "start"  # PInit: returns ``StartedPurchase``; then FINISH with an optional PIN seal
    FINISH = "finish"
    INQUIRE = "inquire"


@dataclass(frozen=True, slots=True)
class FormField:
    name: Name
    value: Annotated[str, MaxLen(256)] = field(repr=False)


@dataclass(frozen=True, slots=True)
class EnrollArgs:
    brand: Name
    number: Annotated[str, MaxLen(34)] = field(repr=False)
    expiry: Annotated[str, MaxLen(4)] = field(repr=False)
    form: list[FormField] = field(repr=False)
    pin_account: bool = False
    bank_code: Annotated[str, MaxLen(11)] = ""  # set: an OPE bank account, ``number`` its no.
    branch: Annotated[str, MaxLen(8)] = ""


@dataclass(frozen=True, slots=True)
class BuyArgs:
    card_id: Name
    merchant: Name  # routing key of the merchant POS, e.g. ``merchant.pos1``
    lid_m: Annotated[bytes, MaxLen(64)]
    description: Text
    currency: Annotated[str, MaxLen(3)]
    amount: int


@dataclass(frozen=True, slots=True)
class StartedPurchase:
    """START's answer: the id FINISH names, the XID and the gateway certificates the PIN seal
    is made for (service.Started)."""

    purchase_id: Name
    xid: Annotated[bytes, MaxLen(64)]
    gateway_cert: CertDER
    brand: Name
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None
    pin_binding: Annotated[str, MaxLen(34)] | None = field(default=None, repr=False)
    oaep_hash: Annotated[str, MaxLen(8)] = "sha1"  # the wallet's suite (key ring)


@dataclass(frozen=True, slots=True)
class FinishArgs:
    purchase_id: Name
    pin_seal: Annotated[bytes, MaxLen(MAX_PIN_SEAL)] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class InquireArgs:
    xid: Annotated[bytes, MaxLen(64)]


@dataclass(frozen=True, slots=True)
class ApiRequest:
    op: ApiOp
    user: Name
    passphrase: Annotated[str, MaxLen(256)] = field(repr=False)
    args: bytes = b""  # the op's args record, encoded


@dataclass(frozen=True, slots=True)
class CardEntry:
    card_id: Name
    brand: Name
    hint: Annotated[str, MaxLen(4)]


@dataclass(frozen=True, slots=True)
class CardList:
    cards: list[CardEntry]


@dataclass(frozen=True, slots=True)
class Enrolled:
    card_id: Name


@dataclass(frozen=True, slots=True)
class Outcome:
    """A purchase's outcome as the merchant signed it: completion and authorization code."""

    xid: Annotated[bytes, MaxLen(64)]
    completion: int
    auth_code: int | None

    @property
    def completion_code(self) -> CompletionCode:
        return CompletionCode(self.completion)

    def describe(self) -> str:
        """``COMPLETION/AUTH_CODE`` as the merchant signed it (what clients print)."""
        auth = "-" if self.auth_code is None else AuthCode(self.auth_code).name
        return f"{self.completion_code.name}/{auth}"


@dataclass(frozen=True, slots=True)
class ApiReply:
    ok: bool
    error: Annotated[str, MaxLen(512)] | None
    body: bytes


for _record in (FormField, EnrollArgs, BuyArgs, StartedPurchase, FinishArgs, InquireArgs,
                ApiRequest, CardEntry, CardList, Enrolled, Outcome, ApiReply):  # fmt: skip
    codec.validate_schema(_record)


class WalletApi:
    """Answers API requests with ``service`` (Rules 2, 3)."""

    def __init__(self, service: WalletService) -> None:
        self.service = service

    async def handle(self, request: RpcRequest) -> bytes:
        try:
            req = codec.decode(ApiRequest, request.body)
            body = await self._dispatch(req)
        except WalletError as exc:
            return codec.encode(ApiReply(False, str(exc)[:512], b""))
        except ProtocolError as exc:
            log.info("wallet_api_bad_request", code=exc.code.name)
            return codec.encode(ApiReply(False, f"bad request: {exc.code.name}", b""))
        return codec.encode(ApiReply(True, None, body))

    async def _dispatch(self, req: ApiRequest) -> bytes:
        svc = self.service
        if req.op is ApiOp.ENROLL:
            args = codec.decode(EnrollArgs, req.args)
            if svc.store.cardholder(req.user) is None:
                svc.register(req.user, req.passphrase)
            kind = pan.AccountKind.BANK if args.bank_code else pan.AccountKind.CARD
            account = pan.Account(kind, args.number, args.bank_code, args.branch)
            card_id = await svc.enroll(
                req.user, req.passphrase, brand=args.brand, account=account, expiry=args.expiry,
                values={f.name: f.value for f in args.form}, pin_account=args.pin_account,
            )  # fmt: skip
            return codec.encode(Enrolled(card_id))
        if req.op is ApiOp.CARDS:
            cards = svc.cards(req.user, req.passphrase)
            return codec.encode(CardList([CardEntry(c.card_id, c.brand, c.hint) for c in cards]))
        if req.op is ApiOp.BUY:
            b = codec.decode(BuyArgs, req.args)
            result = await svc.buy(
                req.user, req.passphrase, card_id=b.card_id, merchant=b.merchant,
                lid_m=b.lid_m, description=b.description, amount=CurrAmt(b.currency, b.amount),
            )  # fmt: skip
            return codec.encode(Outcome(result.xid, int(result.completion), result.auth_code))
        if req.op is ApiOp.START:
            b = codec.decode(BuyArgs, req.args)
            st = await svc.start_purchase(
                req.user, req.passphrase, card_id=b.card_id, merchant=b.merchant,
                lid_m=b.lid_m, description=b.description, amount=CurrAmt(b.currency, b.amount),
            )  # fmt: skip
            out = StartedPurchase(st.purchase_id, st.xid, st.gateway_cert, st.brand, st.certs,
                                  st.crls, st.bci, st.pin_binding, st.oaep_hash)  # fmt: skip
            return codec.encode(out)
        if req.op is ApiOp.FINISH:
            f = codec.decode(FinishArgs, req.args)
            result = await svc.finish_purchase(req.user, req.passphrase, f.purchase_id, f.pin_seal)
            return codec.encode(Outcome(result.xid, int(result.completion), result.auth_code))
        args_i = codec.decode(InquireArgs, req.args)
        result = await svc.inquire(req.user, req.passphrase, args_i.xid)
        return codec.encode(Outcome(result.xid, int(result.completion), result.auth_code))


async def serve_api(bus: Bus, service: WalletService, instance: str) -> RpcServer:
    """Serve ``wallet.<instance>.api`` with ``service`` until the returned server stops."""
    return await serve_rpc(bus, api_queue(instance), WalletApi(service).handle)


async def seal_for(
    started: StartedPurchase,
    root: x509.Certificate,
    pin: str,
    now_ms: int | None = None,
    floor: purchase.BciFloor | None = None,
) -> bytes:
    """Thin client (Rule 5): validate the gateway certificate ``started`` names to ``root``
    with the BCI/CRLs the merchant sent (no older BCI than ``floor`` has seen: purchase Rule
    4), then seal the format 0 block of ``pin`` to it for this XID. Raises ``WalletError``
    (no PIN in its text)."""
    if started.pin_binding is None:
        raise WalletError("this card takes no PIN")
    now = ids.SystemClock().now_ms() if now_ms is None else now_ms
    try:
        validate_pin(pin)
        gateway = purchase.validate_gateway(
            root, started.brand, started.certs, started.bci, started.crls,
            cert_thumbprint(load_certificate(started.gateway_cert)), now, floor,
        )  # fmt: skip
        public = public_key_of(gateway)
        return await seal_pin(
            suite_for_public_key(public, started.oaep_hash), public, cert_thumbprint(gateway),
            started.xid, pin,
            started.pin_binding,
        )  # fmt: skip
    except ProtocolError as exc:
        raise WalletError(f"PIN not sealed: {exc.code.name}") from None


class WalletClient:
    """The cardholder's thin client: one method per API operation; failures are WalletError."""

    def __init__(self, rpc: RpcClient, instance: str = "main", timeout: float = 60.0) -> None:
        self.floor = purchase.BciFloor()  # the newest BCI seen per brand this session
        self.rpc = rpc
        self.queue = api_queue(instance)
        self.timeout = timeout

    @classmethod
    async def create(cls, bus: Bus, instance: str = "main", timeout: float = 60.0) -> WalletClient:
        def from_wallet(login: str | None) -> bool:
            return bool(login) and str(login).endswith(f"wallet.{instance}")

        rpc = await RpcClient.create(bus, accept=from_wallet, default_timeout=timeout)
        return cls(rpc, instance, timeout)

    async def _call(self, op: ApiOp, user: str, passphrase: str, args: object | None) -> bytes:
        request = ApiRequest(op, user, passphrase, b"" if args is None else codec.encode(args))
        try:
            raw = await self.rpc.call(self.queue, codec.encode(request), timeout=self.timeout)
        except BrokerError as exc:
            raise WalletError(f"wallet service unreachable: {type(exc).__name__}") from None
        reply = codec.decode(ApiReply, raw)
        if not reply.ok:
            text = reply.error or "wallet error"
            if text.startswith("unknown cardholder or wrong passphrase"):
                raise AuthenticationFailed(text)
            raise WalletError(text)
        return reply.body

    async def enroll(
        self, user: str, passphrase: str, *, brand: str, number: str, expiry: str,
        form: dict[str, str], pin_account: bool = False, bank_code: str = "", branch: str = "",
    ) -> str:  # fmt: skip
        """Register a card (or, with ``bank_code``, an OPE bank account ``number``) with the CA
        through the wallet; returns the card id. ``pin_account``: the issuer keeps a PIN for
        it, so purchases need ``buy_with_pin``."""
        fields_ = [FormField(k, v) for k, v in form.items()]
        args = EnrollArgs(brand, number, expiry, fields_, pin_account, bank_code, branch)
        body = await self._call(ApiOp.ENROLL, user, passphrase, args)
        return codec.decode(Enrolled, body).card_id

    async def cards(self, user: str, passphrase: str) -> list[CardEntry]:
        return codec.decode(CardList, await self._call(ApiOp.CARDS, user, passphrase, None)).cards

    async def buy(
        self, user: str, passphrase: str, *, card_id: str, merchant: str, lid_m: bytes,
        description: str, amount: CurrAmt,
    ) -> Outcome:  # fmt: skip
        """Pay for order ``lid_m`` at ``merchant`` with card ``card_id``."""
        args = BuyArgs(card_id, merchant, lid_m, description, amount.currency, amount.amount)
        return codec.decode(Outcome, await self._call(ApiOp.BUY, user, passphrase, args))

    async def start_purchase(
        self, user: str, passphrase: str, *, card_id: str, merchant: str, lid_m: bytes,
        description: str, amount: CurrAmt,
    ) -> StartedPurchase:  # fmt: skip
        """PInit for order ``lid_m``: the purchase id, XID and gateway certificates."""
        args = BuyArgs(card_id, merchant, lid_m, description, amount.currency, amount.amount)
        return codec.decode(StartedPurchase, await self._call(ApiOp.START, user, passphrase, args))

    async def finish_purchase(
        self, user: str, passphrase: str, purchase_id: str, pin_seal: bytes | None = None
    ) -> Outcome:
        """PReq for a started purchase, with the PIN seal a PIN account needs."""
        body = await self._call(ApiOp.FINISH, user, passphrase, FinishArgs(purchase_id, pin_seal))
        return codec.decode(Outcome, body)

    async def buy_with_pin(
        self, user: str, passphrase: str, *, root: x509.Certificate, pin: str | None,
        card_id: str, merchant: str, lid_m: bytes, description: str, amount: CurrAmt,
    ) -> Outcome:  # fmt: skip
        """start → (PIN account: validate the gateway certificate to ``root`` and seal ``pin``
        here, in the thin client) → finish. ``pin`` is used only if the card needs one."""
        started = await self.start_purchase(
            user, passphrase, card_id=card_id, merchant=merchant, lid_m=lid_m,
            description=description, amount=amount,
        )  # fmt: skip
        seal = None
        if started.pin_binding is not None:
            if pin is None:
                raise WalletError("this card is a PIN account: a PIN is needed")
            seal = await seal_for(started, root, pin, floor=self.floor)
        return await self.finish_purchase(user, passphrase, started.purchase_id, seal)

    async def inquire(self, user: str, passphrase: str, xid: bytes) -> Outcome:
        body = await self._call(ApiOp.INQUIRE, user, passphrase, InquireArgs(xid))
        return codec.decode(Outcome, body)
