"""The gateway actor process: the actor runtime around ``GatewayService``.

Rule 1: the gateway connects as broker user ``gateway.<instance>``; its keys are that
identity's keys in the keystore (``gateway.<instance>/sig`` and ``/kx``).
Rule 2: it refuses to start without a registered identity (``setpay gateway register``).
Rule 4: ``zpk_label`` names the zone PIN key PIN-bearing PIs are translated to (``main``
uses ``zone.main/zpk`` under the deployment's user prefix); without it OPE debit is refused.
Rule 3: an AuthReq is acked only after its ledger row and reply are committed; a retryable
keystore fault propagates, so the message is redelivered and answered once the keystore is
back (the ledger makes the second pass idempotent).
Rule 5: revocation data stays current while it runs (actors/trust.py Rules 5, 6): the CA's
BCIDistribution reaches its instance queue (bound to ``revocation.*``) and is offered to its
cache; on schedule it pulls a BCI held past three quarters of its window from the CA over a
peer link of its own (replies to its own inbox, broker/inbox.py).
Rule 6: replicas of one gateway identity share its ISO 8583 journal; each process's link
runs under its own process name (actors/iso8583/link.py Rule 6).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.gateway.batch import BatchService
from actors.gateway.books import Books, books_path
from actors.gateway.capture import ClearingService
from actors.gateway.identity import GatewayIdentity, identity_path, journal_path, ledger_path
from actors.gateway.ledger import Ledger
from actors.gateway.pcert import PCertService
from actors.gateway.service import GatewayService, brand_allows
from actors.iso8583.link import IsoLink
from actors.iso8583.security import ZPK_LABEL
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
from keystore import messages as km
from keystore.client import HsmAccountOpener
from protocol.messages import EntityKind, IDData, MessageType
from setpay.config import DEFAULT_ISSUER_PORT, Settings, process_name


class GatewayActor(PartyActor):
    """Serves AuthReq for the brand of its certificates."""

    role = "gateway"
    subscriptions = (REVOCATION_KEYS,)

    def __init__(
        self,
        settings: Settings,
        instance: str,
        *,
        issuer_host: str = "127.0.0.1",
        issuer_port: int = DEFAULT_ISSUER_PORT,
        host_deadline: float = 5.0,
        zpk_label: str | None = None,
        **common: Any,
    ) -> None:
        super().__init__(settings, instance, **common)
        self.issuer_host = issuer_host
        self.issuer_port = issuer_port
        self.host_deadline = host_deadline
        self.zpk_label = zpk_label
        self.ledger: Ledger | None = None
        self.link: IsoLink | None = None
        self.service: GatewayService | None = None
        self.feed: RevocationFeed | None = None
        self.books: Books | None = None
        self.clearing: ClearingService | None = None

    async def setup(self) -> None:
        assert self.bus is not None
        identity = GatewayIdentity.load(identity_path(self.settings.data_dir, self.instance))
        await self.connect_keystore()
        assert self.keys is not None
        sig_key = await self.keys.get(identity.sig_label)
        kx_key = await self.keys.get(identity.kx_label)
        # Group commit (setpay/store.py Rule 5): the ledger's and the journal's commits are
        # synced in shared rounds before anything leaves (publish, ack, ISO 8583 write).
        self.ledger = Ledger(ledger_path(self.settings.data_dir, self.instance), group_commit=True)
        self.closing(self.ledger.close, "ledger")
        self.link = IsoLink(
            self.issuer_host,
            self.issuer_port,
            journal_path(self.settings.data_dir, self.instance),
            deadline=self.host_deadline,
            group_commit=True,
            # replicas share the journal: each names its rows and leases (link.py Rule 6)
            owner=process_name(f"gateway.{self.instance}", self.settings.replica),
        )
        await self.link.start()
        self.closing(self.link.close, "issuer link")
        keystore, ring = self.keystore, self.keys
        zpk = self.zpk_label
        oaep = km.OaepHash(ring.suite.oaep_hash)

        def pi_opener(use_key: bytes) -> HsmAccountOpener:
            return HsmAccountOpener(
                keystore, identity.kx_label, zpk, use_key=use_key, oaep_hash=oaep
            )

        self.service = GatewayService(
            identity,
            sig_key,
            kx_key,
            self.ledger,
            self.link,
            pi_opener=pi_opener,
            zpk_label=zpk,
            clock=self.clock,
            peer_suite=ring.peer_suite,
            require_bci=True,  # seeded from registration: never authorize without revocation data
            subsequent_auth=brand_allows(self.settings.subsequent_auth_brands, identity.brand),
        )
        # after authorization: capture, reversals, credits, batches (capture.py, batch.py)
        self.books = Books(books_path(self.settings.data_dir, self.instance))
        self.closing(self.books.close, "books")
        self.clearing = ClearingService(self.service, self.books)
        self.service.serve(self.clearing.handlers)
        self.service.serve(BatchService(self.clearing).handlers)
        self.service.serve(PCertService(self.clearing).handlers)
        await self.clearing.recover()
        await self._feed_revocation(identity)
        self.serve_set(self.service)

    async def _feed_revocation(self, identity: GatewayIdentity) -> None:
        """Rule 5: take the CA's pushes, and pull on schedule."""
        assert self.bus is not None and self.service is not None
        service = self.service
        ca = await self.connect_ca("trust")

        async def pull(cache: RevocationCache, brand: str) -> Offered:
            return await refresh_from_ca(
                ca, cache, brand=brand, requester=EntityKind.GATEWAY,
                id_data=IDData(None, None, None),
            )  # fmt: skip

        self.feed = RevocationFeed(
            lambda: [service.trust], prefix=login_prefix(self.bus.user_id, self.identity),
            brands=lambda: [identity.brand], clock=self.clock, pull=pull,
            refresh_seconds=self.settings.revocation_refresh_seconds,
        )  # fmt: skip
        service.handlers[MessageType.BCI_DISTRIBUTION] = self.feed.on_distribution
        self.feed.start()
        self.closing(self.feed.stop, "revocation feed")


def main(settings: Settings, instance: str, health_file: Path | None = None) -> Actor:
    """Factory used by ``setpay run gateway`` (supervisor ROLES: ``actors.gateway:main``);
    the issuer host is ``settings.issuer_host``/``issuer_port``."""
    return GatewayActor(
        settings,
        instance,
        issuer_host=settings.issuer_host,
        issuer_port=settings.issuer_port,
        zpk_label=f"{settings.broker_user_prefix}{ZPK_LABEL}",
        health_file=health_file,
    )
