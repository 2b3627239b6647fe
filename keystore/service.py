"""The keystore's request handler: decode, authorise, run on the token, audit, answer.

Rule 1: every operation, refused or not, goes through ``_audited`` (jPOS BaseSMAdapter style)
and yields exactly one ``keystore_op`` audit event: caller, label, op, outcome, duration_ms.
Never data, digests, plaintexts or key material.
Rule 2: PKCS#11 runs on one dedicated thread per process (the token is not initialised with
OS locking); the event loop never blocks on the token. Use several processes for more cores.
Rule 3: every failure is answered as a ``Response`` with a ``Fault`` and a short text; an
unexpected exception becomes ``INTERNAL`` naming only its type.
Rule 4: a payment instruction's wrap opens only through ``open_pi_account`` (keystore/pinops):
a plain DECRYPT whose plaintext holds a PIN-bearing account part, and a plain DERIVE for a PI
envelope's ECDH-ES context (k_extra would open p), are ``Forbidden`` for every caller.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from keystore import messages as m
from keystore import pinops
from keystore.errors import BadRequest, Fault, Forbidden, InternalError, KeystoreError
from keystore.hsm import Hsm
from keystore.policy import Policy
from keystore.register import UsedPiRegister
from protocol import dualsig
from setpay.logs import get_logger

RPC_QUEUE = "keystore.rpc"


class KeystoreService:
    """Serves keystore requests for one process; ``handle`` fits ``broker.rpc.serve_rpc``."""

    def __init__(self, hsm: Hsm, policy: Policy, register: UsedPiRegister | None = None) -> None:
        self.hsm = hsm
        self.policy = policy
        self.register = register
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pkcs11")
        # Bound here, not at import: a worker configures logging (its log file) before this.
        self._audit = get_logger(component="keystore.audit", pid=os.getpid())

    async def start(self) -> None:
        """Open the token session on the PKCS#11 thread."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.hsm.open)

    async def close(self) -> None:
        """Close the session and stop the PKCS#11 thread."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.hsm.close)
        if self.register is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.register.close)
        self._executor.shutdown(wait=True)

    async def handle(self, request: Any) -> bytes:
        """RPC entry point: ``request`` has ``.body`` and the broker-validated ``.user_id``."""
        return await self.handle_bytes(request.user_id, request.body)

    async def handle_bytes(self, caller: str | None, body: bytes) -> bytes:
        """Answer one encoded request from ``caller`` with an encoded ``Response``."""
        try:
            op, record = m.decode_request(body)
        except BadRequest as exc:
            fail = exc

            def refuse() -> Any:
                raise fail

            return self._answer(lambda: self._audited(caller, "decode", None, refuse))
        loop = asyncio.get_running_loop()
        if op is m.Op.BATCH:
            return await loop.run_in_executor(self._executor, self._batch, caller, record)
        return await loop.run_in_executor(self._executor, self._single, caller, op, record)

    # --- on the PKCS#11 thread --------------------------------------------------------------

    def _single(self, caller: str | None, op: m.Op, record: Any) -> bytes:
        label = getattr(record, "label", None)

        def impl() -> Any:
            self._authorize(caller, op, record)
            return self._impl(caller, op, record)

        return self._answer(lambda: self._audited(caller, op.name.lower(), label, impl))

    def _batch(self, caller: str | None, batch: m.Batch) -> bytes:
        results: list[m.ItemResult] = []
        for item in batch.items:

            def impl(item: m.BatchItem = item) -> bytes:
                if item.op not in m.BATCH_OPS:
                    raise BadRequest("a batch holds only sign and decrypt")
                self.policy.check(caller, item.op, item.label)
                if item.op is m.Op.SIGN:
                    return self.hsm.sign(item.label, item.data)
                if item.oaep_hash is None:
                    raise BadRequest("batch decrypt needs an OAEP hash")
                return _no_pin(self.hsm.decrypt(item.label, item.data, item.oaep_hash))

            try:
                data = self._audited(caller, item.op.name.lower(), item.label, impl)
                results.append(m.ItemResult(Fault.OK, "", data))
            except KeystoreError as exc:
                results.append(m.ItemResult(exc.fault, exc.text[:200], b""))
        return m.ok_response(m.BatchResult(results))

    def _authorize(self, caller: str | None, op: m.Op, r: Any) -> None:
        """Role and key checks of a single request: own keys, and zone keys by grant."""
        if op is m.Op.PIN_ENCIPHER:
            self.policy.check(caller, op, None)
            self.policy.check_zone_key(caller, op, r.label)
            return
        self.policy.check(caller, op, getattr(r, "label", None))
        zpk = getattr(r, "zpk_label", None)
        if zpk is not None:
            self.policy.check_zone_key(caller, op, zpk)

    def _impl(self, caller: str | None, op: m.Op, r: Any) -> Any:
        hsm = self.hsm
        if op is m.Op.CREATE:
            return hsm.create_key(r.label, r.kind, r.usage)
        if op is m.Op.PUBLIC_KEY:
            return hsm.key_info(r.label)
        if op is m.Op.SIGN:
            return m.Blob(hsm.sign(r.label, r.digest))
        if op is m.Op.DECRYPT:
            return m.Blob(_no_pin(hsm.decrypt(r.label, r.ciphertext, r.oaep_hash)))
        if op is m.Op.DERIVE:
            if dualsig.is_pi_wrap_info(r.info):
                raise Forbidden("a payment instruction's wrap opens only by open_pi_account")
            return m.Blob(hsm.derive(r.label, r.peer_public, r.info, r.length))
        if op is m.Op.OPEN_PI_ACCOUNT:
            return pinops.open_pi_account(hsm, self.register, str(caller), r)
        if op is m.Op.PIN_PVV:
            return m.Blob(pinops.pin_pvv(hsm, r))
        if op is m.Op.PIN_VERIFY:
            return m.Verdict(pinops.pin_verify(hsm, r))
        if op is m.Op.PIN_ENCIPHER:
            return m.Blob(pinops.pin_encipher(hsm, r))
        if op is m.Op.HMAC:
            return m.Blob(hsm.hmac(r.label, r.data))
        if op is m.Op.SEAL:
            return m.Blob(hsm.seal(r.label, r.plaintext, r.aad))
        if op is m.Op.OPEN:
            return m.Blob(hsm.open_sealed(r.label, r.sealed, r.aad))
        if op is m.Op.LIST:
            return m.KeyList(hsm.list_keys(str(caller)))
        raise BadRequest(f"operation {op.name.lower()} is not served singly")

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
            self._audit.info(
                "keystore_op",
                caller=caller,
                label=label,
                op=op,
                outcome=outcome,
                duration_ms=round((time.perf_counter() - start) * 1000, 3),
            )

    @staticmethod
    def _answer(run: Callable[[], Any]) -> bytes:
        try:
            return m.ok_response(run())
        except KeystoreError as exc:
            return m.error_response(exc.fault, exc.text)


def _no_pin(plaintext: bytes) -> bytes:
    """Rule 4: a PIN-bearing PI wrap never leaves through a plain decrypt."""
    if dualsig.holds_pin_block(plaintext):
        raise Forbidden("a PIN-bearing payment instruction opens only by open_pi_account")
    return plaintext
