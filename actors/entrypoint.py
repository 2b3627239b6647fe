"""The one SET entrypoint every party's messages go through.

Rule 1: the wrapper is decoded once, here (``protocol.wrapper.decode_message``: size, strict
msgpack, version, type, shape, extensions, date window, body record); handlers receive the
``Decoded`` message and never decode the wrapper again.
Rule 2: a message whose AMQP ``type`` disagrees with the type inside its wrapper is refused
with ``wrapperMsgMismatch`` at every party, before any handler runs.
Rule 3: the log context of everything a handler does carries the wrapper's ``msg_type`` and,
when the header names them, ``xid`` and ``rrpid`` (structlog contextvars).
Rule 4: every failure becomes one SET Error (``protocol.set_error.build_error``): a
``ProtocolError`` with its code; a keystore refusal as ``unspecifiedFailure``; signed when the
service names a signer for the decoded request (the CA), unsigned otherwise or when that
signer is unusable. A retryable keystore failure propagates, so the message is redelivered.
An Error received is logged and never answered.
Rule 5: a request whose sender's role may not send its type (``protocol.senders``) is refused
with ``unauthorizedSender`` before any handler runs (when the runtime gave ``role_of``).
A handler learns who sent its message from ``sender()``: the broker-validated user id
of the delivery (``Delivery.user_id``, which RabbitMQ checks against the login), set by the
runtime for the handler's run only (a context variable), never read from the message. It is
``None`` when the message came without one; a party that binds anything to the requester
refuses such a message (the CA: ``unauthorizedSender``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Protocol

import structlog

from keystore.errors import KeystoreError
from protocol import ids
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import MessageType
from protocol.senders import may_send
from protocol.set_error import ERROR_TYPE, ErrorSigner, build_error
from protocol.wrapper import Decoded, amqp_type, decode_message
from setpay.logs import get_logger

log = get_logger(component="set")

Reply = tuple[str, bytes]  # (AMQP message type, wrapped reply)
SetHandler = Callable[[Decoded], Awaitable[Reply | None]]  # None: a one-way message


_SENDER: ContextVar[str | None] = ContextVar("set_sender", default=None)


def sender() -> str | None:
    """The broker-validated user id of the message being handled (Rule 5), or None."""
    return _SENDER.get()


class SetService(Protocol):
    """What a party's service offers the entrypoint."""

    party: str  # how the party names itself in refusals ("merchant", "gateway", "CA")
    clock: ids.Clock
    window_ms: int

    @property
    def handlers(self) -> Mapping[MessageType, SetHandler]: ...

    async def error_signer(self, decoded: Decoded) -> ErrorSigner | None: ...


class SetEntry:
    """Decodes, checks and dispatches one SET message for ``service`` (Rules 1-4)."""

    def __init__(
        self, service: SetService, *, role_of: Callable[[str | None], str | None] | None = None
    ) -> None:
        """``role_of(login)``: the role of a broker login of this environment (the runtime
        passes ``Bus.role_of``); with it every request's sender is checked (Rule 5)."""
        self.service = service
        self.role_of = role_of

    async def handle(
        self, amqp: str | None, data: bytes, *, sender: str | None = None
    ) -> Reply | None:
        """The reply to one wrapped message received under AMQP type ``amqp`` (``None``:
        not checked) from broker user ``sender`` (Rule 5), or ``None`` for an Error received."""
        token = _SENDER.set(sender)
        try:
            return await self._handle(amqp, data)
        finally:
            _SENDER.reset(token)

    async def _handle(self, amqp: str | None, data: bytes) -> Reply | None:
        service = self.service
        decoded: Decoded | None = None
        try:
            decoded = decode_message(
                data, now_ms=service.clock.now_ms(), window_ms=service.window_ms
            )
            if decoded.msg_type is MessageType.ERROR:
                log.info("set_error_received", party=service.party)
                return None
            if amqp is not None and amqp != amqp_type(decoded.msg_type):
                raise ProtocolError(
                    ErrorCode.WRAPPER_MSG_MISMATCH,
                    f"AMQP type {amqp[:16]!r} is not the wrapper's {decoded.msg_type.name}",
                )
            handler = service.handlers.get(decoded.msg_type)
            if handler is None:
                raise ProtocolError(
                    ErrorCode.MESSAGE_NOT_SUPPORTED,
                    f"the {service.party} does not take {decoded.msg_type.name}",
                )
            if self.role_of is not None:
                role = self.role_of(_SENDER.get())
                if not may_send(decoded.msg_type, role):
                    raise ProtocolError(
                        ErrorCode.UNAUTHORIZED_SENDER,
                        f"a {role or 'non-party'} login may not send {decoded.msg_type.name}",
                    )
            with structlog.contextvars.bound_contextvars(**_context(decoded)):
                return await handler(decoded)
        except ProtocolError as exc:
            log.info("set_request_refused", party=service.party, code=exc.code.name,
                     detail=exc.detail)  # fmt: skip
            return ERROR_TYPE, await self._error(exc, data, decoded)
        except KeystoreError as exc:
            if exc.retryable:
                raise  # keystore away: not acked, redelivered once it is back
            log.error("set_keystore_refused", party=service.party, fault=exc.fault.name)
            failure = ProtocolError(
                ErrorCode.UNSPECIFIED_FAILURE, f"the {service.party} cannot use its key"
            )
            return ERROR_TYPE, await self._error(failure, data, None)

    async def _error(self, exc: ProtocolError, data: bytes, decoded: Decoded | None) -> bytes:
        now_ms = self.service.clock.now_ms()
        if decoded is not None:
            try:
                signer = await self.service.error_signer(decoded)
                if signer is not None:
                    return await build_error(exc, data, now_ms, signer)
            except KeystoreError as failure:
                if failure.retryable:
                    raise
                log.error("set_error_unsigned", party=self.service.party,
                          fault=failure.fault.name)  # fmt: skip
        return await build_error(exc, data, now_ms)


def _context(decoded: Decoded) -> dict[str, str]:
    header = decoded.header
    context = {"msg_type": decoded.msg_type.name}
    if header.message_ids is not None and header.message_ids.xid is not None:
        context["xid"] = header.message_ids.xid.hex()
    if header.rrpid is not None:
        context["rrpid"] = header.rrpid.hex()
    return context
