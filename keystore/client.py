"""The async keystore client other actors use, and ``HsmPrivateKey`` for ``protocol/``.

Rule 1: the client never names its identity: the broker stamps ``user_id`` = its login, and
labels are ``<user_id>/<name>``.
Rule 2: every failure surfaces as a ``KeystoreError``: a refused or failed operation as the
class of its ``Fault``, a keystore that is down or silent as ``KeystoreUnavailable``
(``retryable``). A reply is never guessed: no reply, no result.
Rule 3: ``HsmPrivateKey`` implements ``protocol.keys.PrivateKey``; a failed decrypt or derive
is a ``ProtocolError(DECRYPTION_FAILURE)`` there, as that interface promises.
Rule 4: ``HsmAccountOpener`` implements ``protocol.dualsig.AccountOpener`` over
``open_pi_account``: what the PI's sender got wrong becomes a ``ProtocolError`` (decryption
failure, invalid PIN block, replay = piPreviouslyUsed); keystore trouble stays a
``KeystoreError`` (retryable ones are retryable).
Rule 5: no secret in clear on the bus. ``hmac``, ``seal`` and ``pin_issue`` seal their
secret to the keystore's transport key, read once with ``transport_key`` and cached, under
one session key at a time (keystore/transport.py); ``open``, ``decrypt``, ``derive``,
``batch`` and ``open_pi_account`` seal a fresh reply key instead, and their answer (card
data, key material, account data) comes back under it. Each sealed request dies at the call's
timeout: the keystore refuses it as stale after that, and a call that gets no answer is
logged by op and request id only.
Rule 6: every call is counted and timed by op and outcome (``setpay_keystore_calls_total``,
``setpay_keystore_seconds``: ok, the keystore's fault name, unavailable, error).
Rule 7: a call the broker lost (a node failed over mid-call) is sent again, same request,
when its operation is safe to repeat (``operations.changes_state`` false: sign, decrypt,
reads, ...); one that changes state (create key, open_pi_account, PIN operations) is not, and
fails as ``KeystoreUnavailable`` raised from the broker's error.
Rule 8: ``sign`` and ``decrypt`` go through a ``Coalescer`` (keystore/coalesce.py) when
``batching`` > 0: with that many of its sign/decrypt requests in flight, further calls wait and
leave together as one ``batch``; each caller still gets its own item's result or error.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization

from broker.errors import BrokerError, RemoteError
from broker.rpc import RpcClient
from keystore import messages as m
from keystore import transport
from keystore.coalesce import Coalescer
from keystore.errors import (
    BadRequest,
    DecryptionFailed,
    Fault,
    InternalError,
    InvalidPinBlock,
    KeystoreError,
    KeystoreUnavailable,
    PiPreviouslyUsed,
    error_for,
)
from keystore.operations import OPERATIONS, changes_state
from keystore.service import RPC_QUEUE
from protocol import codec
from protocol.dualsig import OpenedAccount
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import KeyType, PublicKey, Suite, suite_for_public_key
from protocol.messages import PIKind
from setpay import metrics
from setpay.logs import get_logger

log = get_logger(component="keystore.client")

DEFAULT_BATCHING = 2  # requests in flight before sign/decrypt calls coalesce (Rule 8)
_BATCH_ITEMS = 32


class KeystoreClient:
    """Calls the keystore actor over RabbitMQ RPC."""

    def __init__(
        self,
        rpc: RpcClient,
        *,
        queue: str = RPC_QUEUE,
        timeout: float | None = None,
        batching: int = DEFAULT_BATCHING,
    ) -> None:
        self.rpc = rpc
        self.queue = queue
        self.timeout = timeout
        self._transport: transport.TransportPublic | None = None
        self._session: transport.TransportSession | None = None
        self.coalescer: Coalescer[m.BatchItem, bytes] | None = None
        if batching > 0:
            self.coalescer = Coalescer(
                self._one_item, self.batch, limit=batching, max_items=_BATCH_ITEMS,
                overloaded=lambda: KeystoreUnavailable("too many keystore calls waiting"),
            )  # fmt: skip

    @classmethod
    async def create(
        cls,
        bus: Any,
        *,
        queue: str = RPC_QUEUE,
        timeout: float | None = None,
        batching: int = DEFAULT_BATCHING,
    ) -> KeystoreClient:
        """A client on its own RPC channel of ``bus``; it takes replies only from a login of
        the keystore role of ``bus``'s environment (a forged verdict from another identity
        is dropped, never read)."""

        def from_keystore(login: str | None) -> bool:
            return bus.role_of(login) == "keystore"

        rpc = await RpcClient.create(bus, accept=from_keystore)
        return cls(rpc, queue=queue, timeout=timeout, batching=batching)

    async def close(self) -> None:
        if self.coalescer is not None:
            await self.coalescer.close()
        await self.rpc.close()

    @property
    def identity(self) -> str:
        return str(self.rpc.bus.user_id)

    def label(self, name: str) -> str:
        """The full label of this caller's key ``name``."""
        return f"{self.identity}/{name}"

    async def _call(self, op: m.Op, record: Any, reply_key: bytes | None = None) -> Any:
        """One keystore operation, counted and timed (Rule 6)."""
        name = op.name.lower()
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await self._round_trip(op, record, reply_key)
            outcome = "ok"
            return result
        except KeystoreUnavailable:
            outcome = "unavailable"
            raise
        except KeystoreError as exc:
            fault = getattr(exc, "fault", None)
            outcome = fault.name.lower() if isinstance(fault, Fault) else "error"
            raise
        finally:
            metrics.KEYSTORE_CALLS.labels(op=name, outcome=outcome).inc()
            metrics.KEYSTORE_SECONDS.labels(op=name).observe(time.perf_counter() - started)

    async def _round_trip(self, op: m.Op, record: Any, reply_key: bytes | None) -> Any:
        try:
            raw = await self.rpc.call(
                self.queue, m.encode_request(op, record), timeout=self.timeout,
                retriable=not changes_state(op),
            )  # fmt: skip
        except RemoteError as exc:
            raise InternalError(f"keystore handler failed ({exc.error_type})") from None
        except BrokerError as exc:
            secret = getattr(record, "secret", None)
            log.warning(
                "keystore_call_unanswered", op=op.name.lower(), error=type(exc).__name__,
                request=None if secret is None else secret.request_id.hex(),
            )  # fmt: skip
            raise KeystoreUnavailable(f"keystore unreachable ({type(exc).__name__})") from exc
        try:
            response = m.decode(m.Response, raw)
        except BadRequest:
            raise InternalError("keystore answered with a malformed response") from None
        if response.fault is not Fault.OK:
            raise error_for(response.fault, response.text)  # the keystore's own refusal
        operation = OPERATIONS[op]
        try:
            if not operation.sealed_reply:
                return m.decode(operation.response, response.body)
            sealed = m.decode(m.SealedReply, response.body).data
        except BadRequest:
            raise InternalError("keystore answered with a malformed response") from None
        if reply_key is None:
            raise InternalError(f"{operation.name} answers under a reply key; none was sealed")
        try:
            clear = transport.open_reply(reply_key, record.secret.request_id, sealed)
            return m.decode(operation.response, clear)
        except (DecryptionFailed, BadRequest):
            raise InternalError("keystore answered with a malformed response") from None

    async def _with_reply(self, op: m.Op, record: Any) -> Any:
        """Call ``op`` whose answer holds a secret: a fresh reply key is sealed into
        ``record`` and the answer opened with it (Rule 5)."""
        reply_key = secrets.token_bytes(transport.KEY_BYTES)
        return await self._call(op, await self.sealed(op, record, reply_key), reply_key)

    async def create_key(self, name: str, kind: m.KeyKind, usage: m.KeyUsage) -> m.KeyInfo:
        """Generate key ``<identity>/<name>`` inside the token."""
        info: m.KeyInfo = await self._call(m.Op.CREATE, m.CreateKey(self.label(name), kind, usage))
        return info

    async def key_info(self, label: str) -> m.KeyInfo:
        info: m.KeyInfo = await self._call(m.Op.PUBLIC_KEY, m.KeyRef(label))
        return info

    async def list_keys(self) -> list[m.KeyInfo]:
        result: m.KeyList = await self._call(m.Op.LIST, m.ListKeys())
        return result.keys

    async def _blob(self, op: m.Op, record: Any) -> bytes:
        blob: m.Blob = await self._call(op, record)
        return blob.data

    async def sign(self, label: str, digest: bytes) -> bytes:
        return await self._private(m.BatchItem(m.Op.SIGN, label, digest, None))

    async def decrypt(
        self, label: str, ciphertext: bytes, oaep_hash: m.OaepHash = m.OaepHash.SHA1
    ) -> bytes:
        return await self._private(m.BatchItem(m.Op.DECRYPT, label, ciphertext, oaep_hash))

    async def _private(self, item: m.BatchItem) -> bytes:
        """A sign or decrypt, coalesced with this client's others while it is busy (Rule 8)."""
        if self.coalescer is None or len(item.data) > m.BATCH_ITEM_BYTES:
            return await self._one_item(item)
        return await self.coalescer.submit(item)

    async def _one_item(self, item: m.BatchItem) -> bytes:
        """``item`` as its own operation."""
        if item.op is m.Op.SIGN:
            return await self._blob(m.Op.SIGN, m.Sign(item.label, item.data))
        oaep = item.oaep_hash or m.OaepHash.SHA1
        record = m.Decrypt(item.label, item.data, oaep, transport.UNSEALED)
        blob: m.Blob = await self._with_reply(m.Op.DECRYPT, record)
        return blob.data

    async def derive(self, label: str, peer_public: bytes, info: bytes, length: int) -> bytes:
        record = m.Derive(label, peer_public, info, length, transport.UNSEALED)
        blob: m.Blob = await self._with_reply(m.Op.DERIVE, record)
        return blob.data

    async def transport_key(self) -> transport.TransportPublic:
        """The keystore's transport key (Rule 5), read once and cached."""
        if self._transport is None:
            answer: m.TransportKey = await self._call(m.Op.TRANSPORT_KEY, m.TransportKeyRequest())
            self._transport = transport.TransportPublic.of(answer)
        return self._transport

    async def sealed(self, op: m.Op, record: Any, secret: bytes) -> Any:
        """``record`` with ``secret`` sealed into its ``secret`` field for ``op`` (Rule 5),
        refused by the keystore once this client's call timeout has passed."""
        timeout = self.rpc.default_timeout if self.timeout is None else self.timeout
        if self._session is None or self._session.spent:
            self._session = (await self.transport_key()).session()
        return transport.seal_request(
            self._session, op, self.identity, record, secret, ttl_ms=int(timeout * 1000)
        )

    async def hmac(self, label: str, data: bytes) -> bytes:
        """HMAC-SHA256 under ``label`` of ``data``, which travels sealed."""
        record = await self.sealed(m.Op.HMAC, m.Hmac(label, transport.UNSEALED), data)
        return await self._blob(m.Op.HMAC, record)

    async def seal(self, label: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        """AES-256-GCM at rest under ``label``; ``plaintext`` travels sealed."""
        record = m.Seal(label, aad, transport.UNSEALED)
        return await self._blob(m.Op.SEAL, await self.sealed(m.Op.SEAL, record, plaintext))

    async def open(self, label: str, sealed: bytes, aad: bytes = b"") -> bytes:
        """Open what ``seal`` made; the plaintext comes back under a one-time reply key."""
        record = m.Open(label, sealed, aad, transport.UNSEALED)
        blob: m.Blob = await self._with_reply(m.Op.OPEN, record)
        return blob.data

    async def open_pi_account(
        self,
        label: str,
        kind: PIKind,
        envelope: bytes,
        zpk_label: str | None = None,
        use_key: bytes | None = None,
        oaep_hash: m.OaepHash = m.OaepHash.SHA1,
        pin_seal: bytes | None = None,
    ) -> OpenedAccount:
        """Open a PI envelope's wrap with key-exchange key ``label``; the PIN in ``pin_seal``
        comes back only as format 4 under zone key ``zpk_label`` (gateway role)."""
        record = m.OpenPiAccount(
            label, zpk_label, kind, envelope, oaep_hash, use_key, pin_seal, transport.UNSEALED
        )
        opened: OpenedAccount = await self._with_reply(m.Op.OPEN_PI_ACCOUNT, record)
        return opened

    async def pin_pvv(self, pvk_label: str, zpk_label: str, account: str, block: bytes) -> bytes:
        """PVV of the PIN in format 4 ``block`` under the ZPK (issuer role)."""
        return await self._blob(m.Op.PIN_PVV, m.PinPvv(pvk_label, zpk_label, account, block))

    async def pin_verify(
        self, pvk_label: str, zpk_label: str, account: str, block: bytes, pvv: bytes
    ) -> bool:
        """Whether the PIN in ``block`` has PVV ``pvv`` (constant time in the keystore)."""
        verdict: m.Verdict = await self._call(
            m.Op.PIN_VERIFY, m.PinVerify(pvk_label, zpk_label, account, block, pvv)
        )
        return verdict.ok

    async def pin_issue(self, pvk_label: str, account: str, pin: str) -> bytes:
        """The PVV of a new PIN for ``account`` (PIN issuance, test-environment seeding; only
        identities with the issuance grant). No PIN block comes back."""
        issued = codec.encode(m.IssuedPin(account, pin))
        record = await self.sealed(
            m.Op.PIN_ISSUE, m.PinIssue(pvk_label, transport.UNSEALED), issued
        )
        return await self._blob(m.Op.PIN_ISSUE, record)

    async def batch(self, items: Sequence[m.BatchItem]) -> list[bytes | KeystoreError]:
        """Run up to ``MAX_BATCH`` sign/decrypt items in one round trip; per-item results."""
        batch = m.Batch(list(items), transport.UNSEALED)
        result: m.BatchResult = await self._with_reply(m.Op.BATCH, batch)
        if len(result.results) != len(items):
            raise InternalError("keystore answered a batch with the wrong number of results")
        return [
            r.data if r.fault is Fault.OK else error_for(r.fault, r.text) for r in result.results
        ]

    async def sign_many(self, label: str, digests: Sequence[bytes]) -> list[bytes | KeystoreError]:
        return await self.batch([m.BatchItem(m.Op.SIGN, label, d, None) for d in digests])

    async def decrypt_many(
        self, label: str, ciphertexts: Sequence[bytes], oaep_hash: m.OaepHash = m.OaepHash.SHA1
    ) -> list[bytes | KeystoreError]:
        return await self.batch(
            [m.BatchItem(m.Op.DECRYPT, label, c, oaep_hash) for c in ciphertexts]
        )

    async def private_key(self, label: str, oaep_hash: str = "sha1") -> HsmPrivateKey:
        """A ``PrivateKey`` for ``protocol/`` backed by the token key ``label``."""
        info = await self.key_info(label)
        if not info.public_key:
            raise BadRequest(f"key {label} is a secret key, not a key pair")
        public = serialization.load_der_public_key(info.public_key)
        suite = suite_for_public_key(public, oaep_hash)
        return HsmPrivateKey(self, info, suite, public)  # type: ignore[arg-type]


class HsmPrivateKey:
    """``protocol.keys.PrivateKey`` whose private half stays in the token."""

    def __init__(
        self, client: KeystoreClient, info: m.KeyInfo, suite: Suite, public: PublicKey
    ) -> None:
        self._client = client
        self._info = info
        self._suite = suite
        self._public = public

    @property
    def key_id(self) -> str:
        return self._info.label

    @property
    def suite(self) -> Suite:
        return self._suite

    @property
    def usage(self) -> m.KeyUsage:
        return self._info.usage

    def public_key(self) -> PublicKey:
        return self._public

    async def sign_digest(self, digest: bytes) -> bytes:
        return await self._client.sign(self._info.label, digest)

    async def decrypt(self, ciphertext: bytes) -> bytes:
        if self._suite.key_type is not KeyType.RSA:
            raise ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, "decrypt needs an RSA key")
        try:
            return await self._client.decrypt(
                self._info.label, ciphertext, m.OaepHash(self._suite.oaep_hash)
            )
        except DecryptionFailed:
            raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "OAEP decryption failed") from None

    async def derive(self, peer_public: bytes, info: bytes, length: int) -> bytes:
        if self._suite.key_type is not KeyType.EC:
            raise ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, "derive needs an EC key")
        try:
            return await self._client.derive(self._info.label, peer_public, info, length)
        except DecryptionFailed:
            raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "bad ephemeral key") from None


class HsmAccountOpener:
    """``protocol.dualsig.AccountOpener`` for one gateway key (and ZPK) in the keystore.

    ``use_key`` names the transaction (e.g. H(XID, RRPID)): the same caller may re-open the
    same PIN-bearing PI with the same key after a crash; any other second opening is refused.
    """

    def __init__(
        self,
        client: KeystoreClient,
        label: str,
        zpk_label: str | None = None,
        *,
        use_key: bytes | None = None,
        oaep_hash: m.OaepHash = m.OaepHash.SHA1,
    ) -> None:
        self.client = client
        self.label = label
        self.zpk_label = zpk_label
        self.use_key = use_key
        self.oaep_hash = oaep_hash

    async def open_pi_account(
        self, kind: PIKind, envelope: bytes, pin_seal: bytes | None = None
    ) -> OpenedAccount:
        try:
            return await self.client.open_pi_account(
                self.label, kind, envelope, self.zpk_label, self.use_key, self.oaep_hash, pin_seal
            )
        except DecryptionFailed:
            raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "PI wrap does not open") from None
        except InvalidPinBlock:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "PIN block does not decode") from None
        except PiPreviouslyUsed:
            raise ProtocolError(ErrorCode.REPLAY, "piPreviouslyUsed") from None
