"""What every SET party actor shares: its settings and the keystore that holds its keys.

Rule 1: a party never holds a private key; ``connect_keystore`` gives it the keystore client
(the keystore authorises it by its broker login) and its key ring (``keystore.keyring``),
bound to the configured suite: the only way the party creates or uses a private key.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from actors.runtime import Actor
from broker.peer import PeerLink
from keystore.client import KeystoreClient
from keystore.keyring import KeyRing
from keystore.service import RPC_QUEUE
from protocol import ids
from protocol.keys import get_suite
from protocol.requester import CAClient
from setpay.clock import CLOCK
from setpay.config import Settings


class PartyActor(Actor):
    """An actor of a SET party (CA, gateway, merchant POS, wallet); ``role`` names it."""

    role: ClassVar[str]

    def __init__(
        self,
        settings: Settings,
        instance: str,
        *,
        url: str | None = None,
        keystore_queue: str = RPC_QUEUE,
        clock: ids.Clock | None = None,
        health_file: Path | None = None,
    ) -> None:
        super().__init__(
            self.role,
            instance,
            url or settings.amqp_url,
            prefetch=settings.broker_prefetch,
            health_file=health_file,
        )
        self.settings = settings
        self.clock = clock or CLOCK
        self.keystore_queue = keystore_queue
        self.keystore: KeystoreClient | None = None
        self.keys: KeyRing | None = None

    async def connect_keystore(self) -> KeystoreClient:
        """The keystore client over this actor's own connection (call from ``setup``)."""
        assert self.bus is not None
        self.keystore = await KeystoreClient.create(
            self.bus, queue=self.keystore_queue, timeout=self.settings.broker_rpc_timeout,
            batching=self.settings.keystore_batching,
        )
        self.closing(self.keystore.close, "keystore")
        self.keys = KeyRing(self.keystore, get_suite(self.settings.suite))
        return self.keystore

    async def connect_ca(self, purpose: str) -> CAClient:
        """A requester's link to the CA over this actor's own connection, its replies taken
        only from a CA login (broker/peer.py), closed with the actor; ``purpose`` names it."""
        assert self.bus is not None
        link = PeerLink(self.bus, self.role, f"{self.instance}-{purpose}",
                        timeout=self.settings.broker_rpc_timeout)  # fmt: skip
        ca = CAClient(await link.start(), clock=self.clock)
        self.closing(ca.close, "CA link")
        return ca
