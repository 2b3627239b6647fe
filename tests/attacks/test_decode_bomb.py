"""A decode bomb against the shared keystore, over the real RabbitMQ and SoftHSM2.

An insider with a genuine broker login (a merchant) publishes 1 MiB msgpack bombs to the
keystore's RPC queue. Before bounded decoding, one such message built 64-83 MB of Python
objects and held the keystore worker's event loop for up to 1.6 s; now the codec's scan
refuses it at its first header. The keystore answers it as any undecodable request (a
``BAD_REQUEST`` reply naming the budget, and a ``decode`` audit line under the caller's
login) and goes on serving honest requests.
"""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from keystore import messages as m
from keystore.errors import Fault
from protocol import codec, primitives
from tests.fixtures_keystore import KeystoreDeployment

pytestmark = pytest.mark.integration

_FILL = codec.MAX_MESSAGE_BYTES - 5
BOMBS = {
    "nested empty arrays": b"\xdd" + struct.pack(">I", _FILL) + b"\x90" * _FILL,
    "empty maps": b"\xdd" + struct.pack(">I", _FILL) + b"\x80" * _FILL,
    "one-entry maps": b"\xdd" + struct.pack(">I", _FILL // 3) + b"\x81\xa0\x90" * (_FILL // 3),
}


async def test_keystore_refuses_decode_bombs_and_keeps_serving(
    keystore_deployment: KeystoreDeployment,
) -> None:
    """Every bomb gets a BAD_REQUEST reply for exceeding the decode budget and is audited as
    a refused ``decode`` by the attacker's login; an honest sign request is served after."""
    attacker = await keystore_deployment.client(f"merchant.t{os.urandom(3).hex()}")
    replies = await asyncio.gather(
        *(
            attacker.rpc.call(keystore_deployment.queue, bomb, timeout=60)
            for bomb in BOMBS.values()
        )
    )
    for raw in replies:
        response = m.decode(m.Response, raw)
        assert response.fault is Fault.BAD_REQUEST
        assert "decoded form too large" in response.text
        assert response.body == b""

    refused = [
        e
        for e in keystore_deployment.audit_events()
        if e.get("caller") == attacker.identity and e.get("op") == "decode"
    ]
    assert len(refused) == len(BOMBS)
    assert {e["outcome"] for e in refused} == {"bad_request"}

    # The keystore still works, for everybody else's keys and for the attacker's own.
    honest = await keystore_deployment.client(f"merchant.t{os.urandom(3).hex()}")
    info = await honest.create_key("sig", m.KeyKind.P256, m.KeyUsage.SIGN)
    key = await honest.private_key(info.label)
    signature = await primitives.sign(key, "PI-TBS", b"after the bomb")
    primitives.verify(key.public_key(), "PI-TBS", b"after the bomb", signature)
    own = await attacker.create_key("k", m.KeyKind.P256, m.KeyUsage.SIGN)
    assert own.label == attacker.label("k")
