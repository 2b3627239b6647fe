"""What the CA keeps between a pended cardholder CertReq and its later answer, sealed at rest.

Rule 1: a pended cardholder request leaves the CA three values it needs for the CertInq
answer: the CABackKey (the answer is EncK under it), the Nonce-CCA and the account hash it
chose. They are stored only sealed: an envelope (``protocol.envelope``) to the brand CCA's
own key-exchange key, so opening it takes that key inside the token (keystore decrypt or
derive, which the ``ca`` role may do); the database never holds them in clear.
Rule 2: a seal is bound to the CertReq's RRPID (in the envelope's AAD and KDF context): a
sealed value copied to another request's row does not open.
Rule 3: each CertInq answer is EncK under a key derived from the CABackKey and the inquiry's
RRPID (``protocol.certreq.inquiry_key``), so no EncK key protects more than one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from protocol import codec
from protocol.codec import MaxLen
from protocol.envelope import seal, unseal
from protocol.keys import PrivateKey

TREATMENT = "CA/at-rest"
CONTENT_TYPE = "PendedCardholder"


@dataclass(frozen=True, slots=True)
class HeldSecrets:
    """The secrets of one pended cardholder request (never stored in clear, Rule 1)."""

    back_key: Annotated[bytes, MaxLen(32)]
    nonce_cca: Annotated[bytes, MaxLen(32)]
    account_hash: Annotated[bytes, MaxLen(64)]

    def __repr__(self) -> str:  # never print the secrets
        return "HeldSecrets(<sealed content>)"


codec.validate_schema(HeldSecrets)


async def seal_held(kx_key: PrivateKey, kx_thumb: bytes, rrpid: bytes, held: HeldSecrets) -> bytes:
    """Seal ``held`` to CA key-exchange key ``kx_key`` (public half only), bound to ``rrpid``."""
    return await seal(
        kx_key.suite,
        kx_key.public_key(),
        kx_thumb,
        TREATMENT,
        CONTENT_TYPE,
        codec.encode(held),
        context=rrpid,
    )


async def open_held(
    kx_key: PrivateKey, kx_thumb: bytes, rrpid: bytes, sealed: bytes
) -> HeldSecrets:
    """Open a seal made by ``seal_held`` for ``rrpid``; ``ProtocolError`` if it does not open."""
    bulk, _, _ = await unseal(kx_key, kx_thumb, sealed, TREATMENT, CONTENT_TYPE, context=rrpid)
    return codec.decode(HeldSecrets, bulk)
