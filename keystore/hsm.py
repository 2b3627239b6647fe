"""Private-key operations on a PKCS#11 token through python-pkcs11 (blocking, one thread).

Rule 1: keys are generated inside the token: CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE=true,
CKA_EXTRACTABLE=false, and only the capability their usage needs (CKA_SIGN, or CKA_DECRYPT /
CKA_DERIVE, or the secret-key pair). Nothing here reads a private or secret key's value.
Rule 2: an ``Hsm`` is used from one thread at a time (python-pkcs11 0.10 calls C_Initialize
without OS locking, and SoftHSM2 then crashes with two threads); each process opens its own.
Rule 3: session trouble (closed, invalid handle, logged out, token removed) triggers one
re-open (re-initialising the library when needed) and one retry; a second failure is
``TokenUnavailable``. A locked or wrong PIN is ``TokenLocked`` and is not retried.
Rule 4: only ECDH's raw shared secret leaves the token (a session object, destroyed at once),
because SoftHSM2 offers only the null KDF; HKDF runs here, inside the keystore process.
Rule 5: key creation holds an exclusive lock shared by every process of the token
(``TokenConfig.write_lock``). SoftHSM2's file store re-reads the token directory only when
the token's generation counter on disk differs from the one the process last saw, and a
process that creates an object stores the counter *after its own increment*: a key another
process created between this process's last index and its own creation is then invisible
to it until some third write (seen as ``NoSuchKey`` for a key just created on another
keystore worker). Under the lock a process indexes (the label lookup) and then writes with
no other writer in between, so its counter never swallows another process's increment.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pkcs11 import KDF, MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from keystore.errors import (
    BadRequest,
    DecryptionFailed,
    KeyExists,
    KeyUsageError,
    NoSuchKey,
    TokenLocked,
    TokenUnavailable,
    Unsupported,
)
from keystore.messages import KeyInfo, KeyKind, KeyUsage, OaepHash
from protocol.keys import SUITES
from protocol.keys import KeyType as SuiteKeyType

T = TypeVar("T")

# DER of the named-curve OID secp256r1 (1.2.840.10045.3.1.7): CKA_EC_PARAMS of P-256 keys.
P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")
GCM_NONCE = 12
GCM_TAG = 16
AES_BLOCK = 16

# Errors that mean "this session (or the library's view of the token) is gone".
_SESSION_ERRORS: tuple[type[Exception], ...] = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.UserNotLoggedIn,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.DeviceError,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
    p11.NoSuchToken,
)
_LOGIN_ERRORS: tuple[type[Exception], ...] = (
    p11.PinLocked,
    p11.PinIncorrect,
    p11.PinExpired,
    p11.PinInvalid,
    p11.PinLenRange,
    p11.UserPinNotInitialized,
)
_SECRET_KINDS = {KeyKind.HMAC256: KeyType.GENERIC_SECRET, KeyKind.AES256: KeyType.AES}
_OAEP_PARAMS = {
    OaepHash.SHA1: (Mechanism.SHA_1, MGF.SHA1, None),
    OaepHash.SHA256: (Mechanism.SHA256, MGF.SHA256, None),
}
_PSS_PARAMS = (Mechanism.SHA256, MGF.SHA256, 32)
_SIGNING_KINDS = (KeyKind.RSA2048, KeyKind.RSA3072, KeyKind.P256)


@dataclass(slots=True)
class _Entry:
    info: KeyInfo
    key: Any  # python-pkcs11 PrivateKey or SecretKey bound to the current session


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """Which token to use; a vendor HSM needs only a different module path, label and PIN."""

    module: str
    token_label: str
    pin: str
    # The file every process of this token locks around key creation (Rule 5); by default
    # ``$SOFTHSM2_CONF.lock``, since that file names the token directory all of them share.
    write_lock: str | None = None

    def __repr__(self) -> str:  # the PIN never appears in reprs or logs
        return f"TokenConfig(module={self.module!r}, token_label={self.token_label!r})"

    def write_lock_path(self) -> str | None:
        """The lock file of Rule 5, or None when no shared SoftHSM2 store is configured."""
        if self.write_lock:
            return self.write_lock
        conf = os.environ.get("SOFTHSM2_CONF")
        return f"{conf}.lock" if conf else None


class Hsm:
    """A logged-in session on one token with a cache of key handles by label."""

    def __init__(self, config: TokenConfig) -> None:
        self._config = config
        self._lib: Any = None
        self._session: Any = None
        self._cache: dict[str, _Entry] = {}
        self._owner_thread: int | None = None
        self._lock_fd: int | None = None
        self.reopens = 0

    @contextmanager
    def _token_writes(self) -> Iterator[None]:
        """Hold the token's cross-process write lock (Rule 5) for the ``with`` body."""
        if self._lock_fd is None:
            path = self._config.write_lock_path()
            if path is None:
                yield
                return
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # --- session lifecycle ----------------------------------------------------------------

    def open(self) -> None:
        """Load the module, find the token and log in (once per process)."""
        try:
            if self._lib is None:
                self._lib = pkcs11.lib(self._config.module)
            token = self._lib.get_token(token_label=self._config.token_label)
            try:
                self._session = token.open(user_pin=self._config.pin, rw=True)
            except p11.UserAlreadyLoggedIn:
                # Login state is per application: another live session already holds it.
                self._session = token.open(rw=True)
        except _LOGIN_ERRORS as exc:
            raise TokenLocked(f"token login refused ({type(exc).__name__})") from None
        except p11.NoSuchToken:
            raise TokenUnavailable(f"no token labelled {self._config.token_label!r}") from None
        except (p11.PKCS11Error, RuntimeError, OSError) as exc:
            raise TokenUnavailable(f"cannot open the token ({type(exc).__name__})") from None
        self._cache.clear()

    def close(self) -> None:
        """Close the session (logs out when it is the last one); never raises."""
        session, self._session = self._session, None
        self._cache.clear()
        if session is not None:
            try:
                session.close()
            except (p11.PKCS11Error, RuntimeError):
                pass

    def _reopen(self) -> None:
        self.reopens += 1
        self.close()
        try:
            self.open()
        except TokenUnavailable:
            # The library itself may have lost the token (device removed): start it afresh.
            if self._lib is not None:
                try:
                    self._lib.reinitialize()
                except (p11.PKCS11Error, RuntimeError):
                    pass
            self.open()

    @property
    def session(self) -> Any:
        """The raw python-pkcs11 session (tests use it to inject faults)."""
        return self._session

    def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the session; on session trouble re-open once and retry."""
        if self._session is None:
            self._reopen()
        try:
            return fn()
        except _SESSION_ERRORS:
            pass
        except _LOGIN_ERRORS as exc:
            raise TokenLocked(f"token login refused ({type(exc).__name__})") from None
        self._reopen()
        try:
            return fn()
        except _SESSION_ERRORS as exc:
            raise TokenUnavailable(f"token session lost twice ({type(exc).__name__})") from None

    # --- keys -------------------------------------------------------------------------------

    def _find(self, label: str, cls: ObjectClass) -> Any | None:
        try:
            return self._session.get_key(label=label, object_class=cls)
        except p11.NoSuchKey:
            return None
        except p11.MultipleObjectsReturned:
            raise KeyExists(f"key {label}: several objects carry this label") from None

    def _entry(self, label: str) -> _Entry:
        entry = self._cache.get(label)
        if entry is not None:
            return entry
        key = self._find(label, ObjectClass.PRIVATE_KEY)
        if key is None:
            key = self._find(label, ObjectClass.SECRET_KEY)
        if key is None:
            raise NoSuchKey(f"no key {label}")
        entry = _Entry(self._describe(label, key), key)
        self._cache[label] = entry
        return entry

    def _describe(self, label: str, key: Any) -> KeyInfo:
        key_type = key.key_type
        if key_type == KeyType.GENERIC_SECRET:
            return KeyInfo(label, KeyKind.HMAC256, KeyUsage.SECRET, b"")
        if key_type == KeyType.AES:
            return KeyInfo(label, KeyKind.AES256, KeyUsage.SECRET, b"")
        usage = KeyUsage.SIGN if key[Attribute.SIGN] else KeyUsage.EXCHANGE
        public = self._find(label, ObjectClass.PUBLIC_KEY)
        if public is None:
            raise NoSuchKey(f"key {label}: public half missing")
        if key_type == KeyType.RSA:
            n = int.from_bytes(public[Attribute.MODULUS], "big")
            e = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
            pub: Any = rsa.RSAPublicNumbers(e, n).public_key()
            kind = {2048: KeyKind.RSA2048, 3072: KeyKind.RSA3072}.get(pub.key_size)
        elif key_type == KeyType.EC and public[Attribute.EC_PARAMS] == P256_PARAMS:
            point = _unwrap_octet_string(public[Attribute.EC_POINT])
            pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            kind = KeyKind.P256
        else:
            kind = None
        if kind is None:
            raise Unsupported(f"key {label}: key type not offered by this keystore")
        der = pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return KeyInfo(label, kind, usage, der)

    def create_key(self, label: str, kind: KeyKind, usage: KeyUsage) -> KeyInfo:
        """Generate a key inside the token under ``label``; ``KeyExists`` if taken."""
        if kind.asymmetric == (usage is KeyUsage.SECRET):
            raise BadRequest(f"key kind {kind.value} cannot have usage {usage.value}")
        def locked() -> KeyInfo:
            with self._token_writes():
                return self._create(label, kind, usage)

        return self._run(locked)

    def _create(self, label: str, kind: KeyKind, usage: KeyUsage) -> KeyInfo:
        # The lookups below are also SoftHSM2's re-index before this process writes (Rule 5).
        if (
            label in self._cache
            or self._find(label, ObjectClass.PRIVATE_KEY) is not None
            or (self._find(label, ObjectClass.SECRET_KEY) is not None)
        ):
            raise KeyExists(f"key {label} already exists")
        ident = label.encode()
        locked = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.MODIFIABLE: False,
        }
        if not kind.asymmetric:
            if kind is KeyKind.HMAC256:
                caps = {Attribute.SIGN: True, Attribute.VERIFY: True}
            else:
                caps = {Attribute.ENCRYPT: True, Attribute.DECRYPT: True}
            none = {
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
                Attribute.DERIVE: False,
            }
            key = self._session.generate_key(
                _SECRET_KINDS[kind], 256, label=label, id=ident, store=True,
                template={**locked, **none, **caps},
            )  # fmt: skip
            info = KeyInfo(label, kind, usage, b"")
            self._cache[label] = _Entry(info, key)
            return info
        signing = usage is KeyUsage.SIGN
        private = {
            **locked,
            Attribute.SIGN: signing,
            Attribute.DECRYPT: not signing and kind is not KeyKind.P256,
            Attribute.DERIVE: not signing and kind is KeyKind.P256,
            Attribute.UNWRAP: False,
        }
        public = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: signing,
            Attribute.ENCRYPT: not signing and kind is not KeyKind.P256,
            Attribute.WRAP: False,
        }
        if kind is KeyKind.P256:
            public[Attribute.EC_PARAMS] = P256_PARAMS
            _pub, priv = self._session.generate_keypair(
                KeyType.EC, 256, label=label, id=ident, store=True,
                public_template=public, private_template=private,
            )  # fmt: skip
        else:
            bits = 2048 if kind is KeyKind.RSA2048 else 3072
            _pub, priv = self._session.generate_keypair(
                KeyType.RSA, bits, label=label, id=ident, store=True,
                public_template=public, private_template=private,
            )  # fmt: skip
        entry = _Entry(self._describe(label, priv), priv)
        self._cache[label] = entry
        return entry.info

    def key_info(self, label: str) -> KeyInfo:
        """Kind, usage and public key (DER SPKI) of a key; ``NoSuchKey`` if absent."""
        return self._run(lambda: self._entry(label).info)

    def list_keys(self, owner: str) -> list[KeyInfo]:
        """Every key whose label starts with ``<owner>/``, sorted by label."""

        def scan() -> list[KeyInfo]:
            labels: set[str] = set()
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY):
                for obj in self._session.get_objects({Attribute.CLASS: cls}):
                    label = obj.label
                    if label.startswith(owner + "/"):
                        labels.add(label)
            return [self._entry(label).info for label in sorted(labels)]

        return self._run(scan)

    # --- operations -------------------------------------------------------------------------

    def _usable(self, label: str, usage: KeyUsage, *kinds: KeyKind) -> _Entry:
        entry = self._entry(label)
        if entry.info.usage is not usage or entry.info.kind not in kinds:
            raise KeyUsageError(
                f"key {label} ({entry.info.kind.value}, {entry.info.usage.value}) "
                f"cannot do this operation"
            )
        return entry

    def sign(self, label: str, digest: bytes) -> bytes:
        """RSA-PSS (MGF1-SHA256, salt 32) or DER-encoded ECDSA over a SHA-256 digest."""
        if len(digest) != 32:
            raise BadRequest("sign takes a 32-byte SHA-256 digest")

        def op() -> bytes:
            entry = self._usable(label, KeyUsage.SIGN, *_SIGNING_KINDS)
            if entry.info.kind is KeyKind.P256:
                raw = entry.key.sign(digest, mechanism=Mechanism.ECDSA)
                half = len(raw) // 2
                return encode_dss_signature(
                    int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
                )
            return bytes(
                entry.key.sign(
                    digest, mechanism=Mechanism.RSA_PKCS_PSS, mechanism_param=_PSS_PARAMS
                )
            )

        return self._run(op)

    def decrypt(self, label: str, ciphertext: bytes, oaep_hash: OaepHash) -> bytes:
        """RSA-OAEP with ``oaep_hash`` for hash and MGF1, no label."""

        def op() -> bytes:
            entry = self._usable(label, KeyUsage.EXCHANGE, KeyKind.RSA2048, KeyKind.RSA3072)
            try:
                return bytes(
                    entry.key.decrypt(
                        ciphertext,
                        mechanism=Mechanism.RSA_PKCS_OAEP,
                        mechanism_param=_OAEP_PARAMS[oaep_hash],
                    )
                )
            except (p11.MechanismInvalid, p11.MechanismParamInvalid, p11.FunctionNotSupported):
                raise _no_oaep(label, entry.info.kind, oaep_hash) from None
            except p11.ArgumentsBad:
                # SoftHSM2 2.6 answers CKR_ARGUMENTS_BAD for every OAEP hash but SHA-1: it
                # checks the parameters before the ciphertext, so this is the mechanism.
                if oaep_hash is not OaepHash.SHA1:
                    raise _no_oaep(label, entry.info.kind, oaep_hash) from None
                raise DecryptionFailed("OAEP decryption failed") from None
            except (p11.EncryptedDataInvalid, p11.EncryptedDataLenRange, p11.DataLenRange,
                    p11.DataInvalid, p11.GeneralError):  # fmt: skip
                raise DecryptionFailed("OAEP decryption failed") from None

        return self._run(op)

    def derive(self, label: str, peer_public: bytes, info: bytes, length: int) -> bytes:
        """ECDH (null KDF, in the token) with an uncompressed P-256 point, then HKDF-SHA256."""
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_public)
        except ValueError:
            raise DecryptionFailed("peer public key is not a P-256 point") from None
        if peer_public[:1] != b"\x04":
            raise DecryptionFailed("peer public key must be an uncompressed point")

        def op() -> bytes:
            entry = self._usable(label, KeyUsage.EXCHANGE, KeyKind.P256)
            try:
                shared = entry.key.derive_key(
                    KeyType.GENERIC_SECRET, 256,
                    mechanism_param=(KDF.NULL, None, peer_public),
                    template={Attribute.TOKEN: False, Attribute.SENSITIVE: False,
                              Attribute.EXTRACTABLE: True},
                )  # fmt: skip
            except (p11.ArgumentsBad, p11.DomainParamsInvalid, p11.GeneralError,
                    p11.AttributeValueInvalid):  # fmt: skip
                raise DecryptionFailed("ECDH with this peer key failed") from None
            try:
                z = bytes(shared[Attribute.VALUE])
            finally:
                shared.destroy()
            return HKDF(hashes.SHA256(), length, salt=None, info=info).derive(z)

        return self._run(op)

    def hmac(self, label: str, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under a secret key."""
        return self._run(
            lambda: bytes(
                self._usable(label, KeyUsage.SECRET, KeyKind.HMAC256).key.sign(
                    data, mechanism=Mechanism.SHA256_HMAC
                )
            )
        )

    def seal(self, label: str, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM under a token key with a fresh random 96-bit nonce: nonce || ct || tag."""

        def op() -> bytes:
            entry = self._usable(label, KeyUsage.SECRET, KeyKind.AES256)
            nonce = secrets.token_bytes(GCM_NONCE)
            ct = entry.key.encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=_gcm(nonce, aad)
            )
            return nonce + bytes(ct)

        return self._run(op)

    def open_sealed(self, label: str, sealed: bytes, aad: bytes) -> bytes:
        """Open what ``seal`` made; ``DecryptionFailed`` if tampered or the wrong key/aad."""
        if len(sealed) < GCM_NONCE + GCM_TAG:
            raise DecryptionFailed("sealed data too short")

        def op() -> bytes:
            entry = self._usable(label, KeyUsage.SECRET, KeyKind.AES256)
            nonce, ct = sealed[:GCM_NONCE], sealed[GCM_NONCE:]
            try:
                return bytes(
                    entry.key.decrypt(
                        ct, mechanism=Mechanism.AES_GCM, mechanism_param=_gcm(nonce, aad)
                    )
                )
            except (p11.EncryptedDataInvalid, p11.EncryptedDataLenRange, p11.GeneralError):
                # SoftHSM2 reports a GCM tag mismatch as CKR_GENERAL_ERROR.
                raise DecryptionFailed("AES-GCM open failed") from None

        return self._run(op)

    def aes_block(self, label: str, block: bytes, *, decrypt: bool) -> bytes:
        """One AES block (CKM_AES_ECB) under a token AES key: the ISO 9564 format 4 step.
        Internal to PIN operations; never served as an op of its own."""
        if len(block) != AES_BLOCK:
            raise BadRequest("an AES block is 16 bytes")

        def op() -> bytes:
            key = self._usable(label, KeyUsage.SECRET, KeyKind.AES256).key
            run = key.decrypt if decrypt else key.encrypt
            return bytes(run(block, mechanism=Mechanism.AES_ECB))

        return self._run(op)


def _no_oaep(label: str, kind: KeyKind, oaep_hash: OaepHash) -> Unsupported:
    """The refusal of a decrypt whose OAEP hash the token lacks: mechanism, suite and key."""
    bits = {KeyKind.RSA2048: 2048, KeyKind.RSA3072: 3072}.get(kind)
    suites = sorted(
        s.name for s in SUITES.values()
        if s.key_type is SuiteKeyType.RSA and s.key_size == bits and s.oaep_hash == oaep_hash
    )  # fmt: skip
    suite = ", ".join(suites) or f"{kind.value} with OAEP-{oaep_hash.value}"
    name = {OaepHash.SHA1: "SHA-1", OaepHash.SHA256: "SHA-256"}[oaep_hash]
    return Unsupported(
        f"token lacks CKM_RSA_PKCS_OAEP with {name} (hash and MGF1), which suite {suite} "
        f"needs: key {label} cannot decrypt for it"
    )


def _gcm(nonce: bytes, aad: bytes) -> GCMParams:
    return GCMParams(nonce, aad or None)


def _unwrap_octet_string(value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the point (PKCS#11 2.40); accept both."""
    if len(value) >= 2 and value[0] == 0x04 and value[1] == len(value) - 2:
        return bytes(value[2:])
    return bytes(value)
