"""The CA actor process: the actor runtime around ``CAService``.

Rule 1: the CA connects as broker user ``ca.<instance>``; its keys are that identity's keys in
the keystore (labels ``ca.<instance>/<name>``), so only this identity can use them.
Rule 2: the actor refuses to start without a hierarchy (``setpay ca init`` first): it never
creates CA keys on its own.
Rule 3: the reply goes to the requester's ``reply_to`` through the runtime; a request is
acked only after its effects and reply are committed (``CAService`` Rule 2).
Rule 4: the CCA reaches the issuer host (``settings.issuer_host``/``issuer_port``, as the
gateway does) through ``actors.iso8583``'s link for account verifications; an empty
``issuer_host`` configures none, and cardholder registration is then refused unless
``settings.ca_verify_cards`` is off (tests only). The broker user prefix of this
deployment is what precedes our own identity in our login, so senders are told by
``role.instance`` (``CAService`` Rule 7).
Rule 5: once serving, the actor publishes revocation data to the running parties and renews
each brand's BCI at half its life, every ``settings.ca_revocation_poll_seconds``
(``actors/ca/publisher.py``), so a ``setpay ca revoke`` on its store reaches them without a
restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.ca.brands import TEST_BRANDS, Brand
from actors.ca.hierarchy import ROOT, Hierarchy
from actors.ca.publisher import RevocationPublisher
from actors.ca.service import CAService
from actors.ca.store import CAStore
from actors.iso8583.link import IsoLink
from actors.party import PartyActor
from actors.runtime import Actor
from setpay.config import Settings
from setpay.lifecycle import NotReady


class CAActor(PartyActor):
    """Serves certificate requests of every brand in the store."""

    role = "ca"

    def __init__(
        self,
        settings: Settings,
        instance: str,
        *,
        brands: tuple[Brand, ...] = TEST_BRANDS,
        **common: Any,
    ) -> None:
        super().__init__(settings, instance, **common)
        self.brands = brands
        self.store: CAStore | None = None
        self.service: CAService | None = None
        self.publisher: RevocationPublisher | None = None

    async def setup(self) -> None:
        assert self.bus is not None
        self.store = CAStore.open(self.settings.data_dir)
        self.closing(self.store.close, "store")
        if self.store.ca(ROOT) is None:
            raise NotReady("no CA hierarchy in the database: run `setpay ca init` first")
        await self.connect_keystore()
        assert self.keys is not None
        verify = None
        if self.settings.issuer_host:
            link = IsoLink(
                self.settings.issuer_host,
                self.settings.issuer_port,
                self.settings.data_dir / "ca" / f"issuer-link-{self.instance}.sqlite",
            )
            await link.start()
            self.closing(link.close, "issuer link")
            verify = link.verify
        login = self.bus.user_id
        prefix = login[: -len(self.identity)] if login.endswith(self.identity) else ""
        hierarchy = Hierarchy(self.store, self.keys)
        self.service = CAService(
            hierarchy,
            brands=self.brands,
            clock=self.clock,
            identity_prefix=prefix,
            verify_account=verify,
            verify_cards=self.settings.ca_verify_cards,
        )
        self.serve_set(self.service)
        self.publisher = RevocationPublisher(
            hierarchy, self.bus, clock=self.clock, renew=self.service.renew_stale_bcis,
            poll_seconds=self.settings.ca_revocation_poll_seconds,
        )  # fmt: skip
        self.publisher.start()
        self.closing(self.publisher.stop, "revocation publisher")


def main(settings: Settings, instance: str, health_file: Path | None = None) -> Actor:
    """Factory used by ``setpay run ca`` (supervisor ROLES: ``actors.ca:main``)."""
    return CAActor(settings, instance, health_file=health_file)
