"""The merchant POS actor process: the actor runtime around ``MerchantService``.

Rule 1: the POS connects as broker user ``merchant.<instance>``; its merchants' keys are that
identity's keys in the keystore, so no other identity can use them.
Rule 2: cardholders reach it on routing key ``merchant.<instance>`` (PInitReq, PReq, InqReq);
it reaches the gateway as protocol/payment.py Rule 3 says, through a ``broker.peer.PeerLink``
whose replies come to its own queue ``merchant.<instance>-gw`` (not the actor's, so a PReq in
progress never waits behind itself).
Rule 3: a request is acked only after its effects and reply are committed (runtime Rule 3).
Rule 4: operators reach it over HTTPS on ``web_host``:``pos_web_port`` (the console page and
`setpay pos`; actors/merchant/api.py on the actors/web front door), never over the bus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.merchant.api import front_door
from actors.merchant.service import MerchantService
from actors.merchant.store import MerchantStore
from actors.party import PartyActor
from actors.runtime import Actor
from actors.web.server import FrontDoor
from broker.peer import PeerLink
from protocol.payment import GATEWAY_ROLE
from setpay.config import Settings


class MerchantActor(PartyActor):
    """Hosts the POS of every merchant in its store."""

    role = "merchant"

    def __init__(
        self,
        settings: Settings,
        instance: str,
        *,
        gateway_target: str = GATEWAY_ROLE,
        gateway_timeout: float | None = None,
        **common: Any,
    ) -> None:
        super().__init__(settings, instance, **common)
        self.gateway_target = gateway_target
        self.gateway_timeout = gateway_timeout or settings.broker_rpc_timeout
        self.store: MerchantStore | None = None
        self.gateway: PeerLink | None = None
        self.service: MerchantService | None = None
        self.api: FrontDoor | None = None

    async def setup(self) -> None:
        assert self.bus is not None
        self.store = MerchantStore.open(self.settings.data_dir, self.instance)
        self.closing(self.store.close, "store")
        await self.connect_keystore()
        assert self.keys is not None
        self.gateway = await PeerLink(
            self.bus,
            self.role,
            f"{self.instance}-gw",
            timeout=self.gateway_timeout,
            target=self.gateway_target,
        ).start()
        self.closing(self.gateway.close, "gateway link")
        self.service = MerchantService(
            self.store, self.keys.get, self.gateway, clock=self.clock,
            peer_suite=self.keys.peer_suite,
        )  # fmt: skip
        self.closing(self.service.close, "trust caches")
        self.serve_set(self.service)
        self.api = front_door(self.settings, self.service, self.instance)
        await self.api.start()
        self.closing(self.api.stop, "https front door")


def main(settings: Settings, instance: str, health_file: Path | None = None) -> Actor:
    """Factory used by ``setpay run merchant`` (supervisor ROLES: ``actors.merchant:main``)."""
    return MerchantActor(settings, instance, health_file=health_file)
