"""The keystore's request handler: decode, authorise, run on the token, audit, answer.

Rule 1: every operation, refused or not, goes through ``_perform`` (jPOS BaseSMAdapter style:
authorise -> run the operation object -> audit) and yields exactly one ``keystore_op`` audit
event: caller, label, op, outcome, duration_ms. Never data, digests, plaintexts or key
material. A batch's items each go through ``_perform`` as the single op they name; an
undecodable request is audited as op ``decode``.
Rule 2: PKCS#11 runs on one dedicated thread per process (the token is not initialised with
OS locking); the event loop never blocks on the token. Use several processes for more cores.
Rule 3: every failure is answered as a ``Response`` with a ``Fault`` and a short text; an
unexpected exception becomes ``INTERNAL`` naming only its type.
Rule 4: what an operation is, who may call it and what it does live in its object
(keystore/operations.py); this module does not branch on ``Op``.
Rule 5: an operation whose answer holds a secret (``Operation.sealed_reply``) has its reply
key opened after the policy passed and before ``run`` (a request whose seal does not open
does nothing), and its answer sent as a ``SealedReply`` under that key; the items of a
batch are answered inside the batch's sealed reply.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from keystore import messages as m
from keystore import transport
from keystore.errors import BadRequest, Fault, InternalError, KeystoreError
from keystore.hsm import Hsm
from keystore.operations import Context, Operation, decode_request
from keystore.pinguard import PinGuard
from keystore.policy import Policy
from keystore.register import UsedPiRegister
from protocol import codec
from setpay import metrics
from setpay.logs import get_logger

RPC_QUEUE = "keystore.rpc"


class KeystoreService:
    """Serves keystore requests for one process; ``handle`` fits ``broker.rpc.serve_rpc``."""

    def __init__(
        self,
        hsm: Hsm,
        policy: Policy,
        register: UsedPiRegister | None = None,
        guard: PinGuard | None = None,
        transport_oaep: m.OaepHash = m.OaepHash.SHA1,
    ) -> None:
        self.hsm = hsm
        self.opener = transport.Opener(hsm, transport_oaep)
        self.policy = policy
        self.register = register
        self.guard = guard
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pkcs11")
        # Bound here, not at import: a worker configures logging (its log file) before this.
        self._audit = get_logger(component="keystore.audit", pid=os.getpid())

    async def start(self) -> None:
        """Open the token session on the PKCS#11 thread; make the transport key if absent."""

        def open_token() -> None:
            self.hsm.open()
            transport.ensure_key(self.hsm)

        await asyncio.get_running_loop().run_in_executor(self._executor, open_token)

    async def close(self) -> None:
        """Close the session and stop the PKCS#11 thread."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.hsm.close)
        if self.register is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.register.close)
        if self.guard is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.guard.close)
        self._executor.shutdown(wait=True)

    async def handle(self, request: Any) -> bytes:
        """RPC entry point: ``request`` has ``.body`` and the broker-validated ``.user_id``."""
        return await self.handle_bytes(request.user_id, request.body)

    async def handle_bytes(self, caller: str | None, body: bytes) -> bytes:
        """Answer one encoded request from ``caller`` with an encoded ``Response``."""
        try:
            operation, record = decode_request(body)
        except BadRequest as exc:
            fail = exc

            def refuse() -> Any:
                raise fail

            return self._answer(lambda: self._audited(caller, "decode", None, refuse))
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._answer, lambda: self._run(caller, operation, record)
        )

    # --- on the PKCS#11 thread --------------------------------------------------------------

    def _run(self, caller: str | None, operation: Operation, record: Any) -> Any:
        if not operation.audited:  # a batch: each item is performed (and audited) alone
            self.policy.role_of(caller)
            ctx = self._context(caller)
            return self._reply(ctx, operation, record, lambda: operation.run(ctx, record))
        label = getattr(record, "label", None)
        return self._perform(caller, operation, label, lambda: record, top=True)

    def _perform(
        self,
        caller: str | None,
        operation: Operation,
        label: str | None,
        record_of: Callable[[], Any],
        *,
        top: bool = False,
    ) -> Any:
        """The one template (Rule 1): build the record, authorise, run, audit; a request's
        own (``top``) answer under its reply key when it holds a secret (Rule 5)."""

        def step() -> Any:
            record = record_of()
            self.policy.authorize(caller, operation, record)
            ctx = self._context(caller)
            if not top:
                return operation.run(ctx, record)
            return self._reply(ctx, operation, record, lambda: operation.run(ctx, record))

        return self._audited(caller, operation.name, label, step)

    @staticmethod
    def _reply(ctx: Context, operation: Operation, record: Any, run: Callable[[], Any]) -> Any:
        """``run()``'s answer, as a ``SealedReply`` when ``operation`` has one (Rule 5)."""
        if not operation.sealed_reply:
            return run()
        reply_key = ctx.unseal(operation.op, record)
        answer = codec.encode(run())
        return m.SealedReply(transport.seal_reply(reply_key, record.secret.request_id, answer))

    def _context(self, caller: str | None) -> Context:
        def perform(operation: Operation, label: str | None, record_of: Callable[[], Any]) -> Any:
            return self._perform(caller, operation, label, record_of)

        return Context(self.hsm, self.register, self.guard, str(caller), perform, self.opener)

    def _audited(
        self, caller: str | None, op: str, label: str | None, impl: Callable[[], Any]
    ) -> Any:
        """The one template every operation runs through: time it, audit it, map errors."""
        start = time.perf_counter()
        outcome = "ok"
        try:
            return impl()
        except KeystoreError as exc:
            outcome = exc.fault.name.lower()
            raise
        except Exception as exc:
            # PKCS#11 or library errors we did not map: name the type only, never the text.
            outcome = Fault.INTERNAL.name.lower()
            raise InternalError(f"unexpected {type(exc).__name__}") from None
        finally:
            elapsed = time.perf_counter() - start
            self._audit.info(
                "keystore_op",
                caller=caller,
                label=label,
                op=op,
                outcome=outcome,
                duration_ms=round(elapsed * 1000, 3),
            )
            metrics.KEYSTORE_OPERATIONS.labels(op=op, outcome=outcome).inc()
            metrics.KEYSTORE_OPERATION_SECONDS.labels(op=op).observe(elapsed)

    @staticmethod
    def _answer(run: Callable[[], Any]) -> bytes:
        try:
            return m.ok_response(run())
        except KeystoreError as exc:
            return m.error_response(exc.fault, exc.text)
