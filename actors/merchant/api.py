"""The POS operator's thin-client API: create orders and list hosted merchants over RPC.

Rule 1: the API is the RPC queue ``merchant.<instance>.api`` (broker/rpc.py: direct
reply-to, not traced); requests and replies are codec records, decoded strictly.
Rule 2: an order is what the shop agreed with the cardholder; the API returns its LID-M,
which the cardholder's wallet then pays (PInit/PReq carry it).
Rule 3: a refused request is ``ApiReply(ok=False, error=...)`` naming what was wrong; the
client raises it as ``MerchantError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from actors.merchant.errors import MerchantError
from actors.merchant.service import MerchantService
from broker.connection import Bus
from broker.errors import BrokerError
from broker.rpc import RpcClient, RpcRequest, RpcServer, serve_rpc
from protocol import codec
from protocol.codec import MaxLen
from protocol.errors import ProtocolError
from protocol.messages import CurrAmt
from setpay.logs import get_logger

log = get_logger(component="merchant.api")


def api_queue(instance: str) -> str:
    """The RPC queue of POS instance ``instance`` (Rule 1)."""
    return f"merchant.{instance}.api"


@dataclass(frozen=True, slots=True)
class OrderArgs:
    merchant_id: Annotated[str, MaxLen(64)]
    description: Annotated[str, MaxLen(4096)]
    currency: Annotated[str, MaxLen(3)]
    amount: int
    sale: bool  # capture now


@dataclass(frozen=True, slots=True)
class ApiRequest:
    op: Annotated[str, MaxLen(16)]  # "order" | "merchants"
    args: bytes


@dataclass(frozen=True, slots=True)
class ApiReply:
    ok: bool
    error: Annotated[str, MaxLen(512)] | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Names:
    names: list[Annotated[str, MaxLen(64)]]


for _record in (OrderArgs, ApiRequest, ApiReply, Names):
    codec.validate_schema(_record)


class MerchantApi:
    """Answers operator requests with ``service`` (Rules 2, 3)."""

    def __init__(self, service: MerchantService) -> None:
        self.service = service

    async def handle(self, request: RpcRequest) -> bytes:
        try:
            req = codec.decode(ApiRequest, request.body)
            if req.op == "order":
                a = codec.decode(OrderArgs, req.args)
                body = self.service.create_order(
                    a.merchant_id, a.description, CurrAmt(a.currency, a.amount), sale=a.sale
                )
            elif req.op == "merchants":
                body = codec.encode(Names(self.service.store.merchant_ids()))
            else:
                raise MerchantError(f"unknown operation {req.op!r}")
        except MerchantError as exc:
            return codec.encode(ApiReply(False, str(exc)[:512], b""))
        except ProtocolError as exc:
            log.info("merchant_api_bad_request", code=exc.code.name)
            return codec.encode(ApiReply(False, f"bad request: {exc.code.name}", b""))
        return codec.encode(ApiReply(True, None, body))


async def serve_api(bus: Bus, service: MerchantService, instance: str) -> RpcServer:
    """Serve ``merchant.<instance>.api`` with ``service``."""
    return await serve_rpc(bus, api_queue(instance), MerchantApi(service).handle)


class MerchantClient:
    """The operator's thin client; failures are ``MerchantError``."""

    def __init__(self, rpc: RpcClient, instance: str = "pos1", timeout: float = 10.0) -> None:
        self.rpc = rpc
        self.instance = instance
        self.queue = api_queue(instance)
        self.timeout = timeout

    @classmethod
    async def create(cls, bus: Bus, instance: str = "pos1") -> MerchantClient:
        def from_pos(login: str | None) -> bool:
            return bool(login) and str(login).endswith(f"merchant.{instance}")

        return cls(await RpcClient.create(bus, accept=from_pos), instance)

    @property
    def route(self) -> str:
        """The routing key cardholders' wallets send PInitReq/PReq/InqReq to."""
        return f"merchant.{self.instance}"

    async def _call(self, op: str, args: bytes) -> bytes:
        try:
            raw = await self.rpc.call(self.queue, codec.encode(ApiRequest(op, args)),
                                      timeout=self.timeout)  # fmt: skip
        except BrokerError as exc:
            raise MerchantError(f"POS unreachable: {type(exc).__name__}") from None
        reply = codec.decode(ApiReply, raw)
        if not reply.ok:
            raise MerchantError(reply.error or "POS error")
        return reply.body

    async def create_order(
        self, merchant_id: str, description: str, amount: CurrAmt, *, sale: bool = False
    ) -> bytes:
        """A new order at ``merchant_id``; returns its LID-M."""
        args = OrderArgs(merchant_id, description, amount.currency, amount.amount, sale)
        return await self._call("order", codec.encode(args))

    async def merchants(self) -> list[str]:
        return codec.decode(Names, await self._call("merchants", b"")).names
