"""The wallet actor process: the actor runtime around ``WalletService``.

Rule 1: the wallet connects as broker user ``wallet.<instance>``; card keys and the vault key
are that identity's keys in the keystore.
Rule 2: it reaches the CA and merchants through clients with queues of their own
(``wallet.<instance>-ca``, ``wallet.<instance>-peer``); it takes no unsolicited SET message.
Rule 3: the trusted root is ``<data_dir>/wallet/root.der`` (``setpay ca export``); without it
the wallet starts but refuses enrolment.
Rule 4: cardholders' thin clients (the web page, `setpay wallet`, the demo and the bench)
reach it over HTTPS on ``web_host``:``wallet_web_port`` (actors/wallet/api.py on the
actors/web front door), never over the bus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.party import PartyActor
from actors.runtime import Actor
from actors.wallet.api import front_door
from actors.wallet.service import LEASE_SECONDS, WalletService
from actors.wallet.store import WalletStore
from actors.web.server import FrontDoor
from broker.peer import PeerLink
from protocol.certs import load_certificate
from protocol.keys import get_suite
from protocol.requester import CAClient
from setpay.config import Settings, process_name


class WalletActor(PartyActor):
    """Hosts the wallets of many cardholders (``self.service`` once started)."""

    role = "wallet"

    def __init__(self, settings: Settings, instance: str, **common: Any) -> None:
        super().__init__(settings, instance, **common)
        self.store: WalletStore | None = None
        self.peers: PeerLink | None = None
        self.ca: CAClient | None = None
        self.service: WalletService | None = None
        self.api: FrontDoor | None = None

    async def setup(self) -> None:
        assert self.bus is not None
        self.store = WalletStore.open(self.settings.data_dir, self.instance, group_commit=True)
        self.closing(self.store.close, "store")
        await self.connect_keystore()
        timeout = self.settings.broker_rpc_timeout
        self.peers = await PeerLink(
            self.bus, self.role, f"{self.instance}-peer", timeout=timeout
        ).start()
        self.closing(self.peers.close, "peer link")
        self.ca = CAClient(
            await PeerLink(self.bus, self.role, f"{self.instance}-ca", timeout=timeout).start(),
            oaep_hash=get_suite(self.settings.suite).oaep_hash, clock=self.clock,
        )
        self.closing(self.ca.close, "CA link")
        root_file = Path(self.settings.data_dir) / "wallet" / "root.der"
        root = load_certificate(root_file.read_bytes()) if root_file.is_file() else None
        self.service = WalletService(
            self.store, self.keystore, self.peers, self.ca, root=root,
            suite=get_suite(self.settings.suite),
            owner=process_name(f"wallet.{self.instance}", self.settings.replica),
            lease_seconds=max(LEASE_SECONDS, 3 * self.settings.broker_rpc_timeout),
        )  # fmt: skip
        await self.service.start()
        self.api = front_door(self.settings, self.service)
        await self.api.start()
        self.closing(self.api.stop, "https front door")


def main(settings: Settings, instance: str, health_file: Path | None = None) -> Actor:
    """Factory used by ``setpay run wallet`` (supervisor ROLES: ``actors.wallet:main``)."""
    return WalletActor(settings, instance, health_file=health_file)
