"""The merchant POS actor process: the actor runtime around ``MerchantService``.

Rule 1: the POS connects as broker user ``merchant.<instance>``; its merchants' keys are that
identity's keys in the keystore, so no other identity can use them.
Rule 2: cardholders reach it on routing key ``merchant.<instance>`` (PInitReq, PReq, InqReq);
it reaches the gateway as protocol/payment.py Rule 3 says, through a ``broker.peer.PeerLink``
whose replies come to its own inbox (broker/inbox.py; never behind a PReq in progress).
Rule 3: a request is acked only after its effects and reply are committed (runtime Rule 3).
Rule 4: operators reach it over HTTPS on ``web_host``:``pos_web_port`` (the console page and
`setpay pos`; actors/merchant/api.py on the actors/web front door), never over the bus.
Rule 5: revocation data stays current while it runs (actors/trust.py Rules 5, 6): the CA's
BCIDistribution reaches its instance queue (bound to ``revocation.*``) and is offered to the
revocation cache of each root its merchants trust; on schedule it pulls a BCI held past three
quarters of its window from the CA (as one of its merchants of that brand), over a peer
link of its own (replies to its own inbox, broker/inbox.py).
Rule 6: an authorization the gateway did not answer in time is finished in the background
(service Rule 4): the books of merchant and gateway come to agree without the cardholder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.merchant.api import front_door
from actors.merchant.service import MerchantService
from actors.merchant.store import MerchantRow, MerchantStore
from actors.party import PartyActor
from actors.runtime import Actor
from actors.trust import (
    REVOCATION_KEYS,
    Offered,
    RevocationCache,
    RevocationFeed,
    login_prefix,
    refresh_from_ca,
)
from actors.web.server import FrontDoor
from broker.peer import PeerLink
from protocol.certs import cert_thumbprint, load_certificate
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import EntityKind, IDData, MessageType
from protocol.payment import GATEWAY_ROLE
from setpay.config import Settings
from setpay.lifecycle import Periodic


class MerchantActor(PartyActor):
    """Hosts the POS of every merchant in its store."""

    role = "merchant"
    subscriptions = (REVOCATION_KEYS,)

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
        self.feed: RevocationFeed | None = None

    async def setup(self) -> None:
        assert self.bus is not None
        self.store = MerchantStore.open(self.settings.data_dir, self.instance, group_commit=True)
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
        await self._feed_revocation()
        self.serve_set(self.service)
        self._finish_silent_auths()
        self.api = front_door(self.settings, self.service, self.instance)
        await self.api.start()
        self.closing(self.api.stop, "https front door")

    def _finish_silent_auths(self) -> None:
        """Rule 6: every gateway timeout, finish the authorizations the gateway left
        unanswered for two of them (service Rule 4); each replica runs it, the store's
        compare-and-set commits keeping one outcome."""
        assert self.service is not None
        service, wait_ms = self.service, int(2 * self.gateway_timeout * 1000)
        rounds = Periodic(
            "merchant_silent_auths", lambda: service.resolve_silent(wait_ms), self.gateway_timeout
        )
        rounds.start()
        self.closing(rounds.stop, "silent authorizations")

    async def _feed_revocation(self) -> None:
        """Rule 5: take the CA's pushes into every root's cache, and pull on schedule."""
        assert self.bus is not None and self.service is not None and self.store is not None
        service, store = self.service, self.store
        ca = await self.connect_ca("trust")

        def merchants() -> list[MerchantRow]:
            return [m for m in map(store.merchant, store.merchant_ids()) if m is not None]

        def caches() -> list[RevocationCache]:
            roots = {m.root: None for m in merchants()}
            return [service.trust_cache(load_certificate(root)) for root in roots]

        async def pull(cache: RevocationCache, brand: str) -> Offered:
            root = cert_thumbprint(cache.root)
            for m in merchants():
                if m.brand == brand and cert_thumbprint(load_certificate(m.root)) == root:
                    return await refresh_from_ca(
                        ca, cache, brand=brand, requester=EntityKind.MERCHANT,
                        id_data=IDData(m.merchant_id, None, None),
                    )  # fmt: skip
            raise ProtocolError(ErrorCode.UNKNOWN_LID, "no merchant of this brand hosted")

        self.feed = RevocationFeed(
            caches, prefix=login_prefix(self.bus.user_id, self.identity), clock=self.clock,
            brands=lambda: {m.brand for m in merchants()}, pull=pull,
            refresh_seconds=self.settings.revocation_refresh_seconds,
        )  # fmt: skip
        service.handlers[MessageType.BCI_DISTRIBUTION] = self.feed.on_distribution
        self.feed.start()
        self.closing(self.feed.stop, "revocation feed")


def main(settings: Settings, instance: str, health_file: Path | None = None) -> Actor:
    """Factory used by ``setpay run merchant`` (supervisor ROLES: ``actors.merchant:main``)."""
    return MerchantActor(settings, instance, health_file=health_file)
