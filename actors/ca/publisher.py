"""The CA's push of revocation data to the running parties (actors/trust.py Rule 5).

Rule 1: every ``poll_seconds`` the CA actor renews each brand's BCI past half its life
(``CAService.renew_stale_bcis``) and compares each brand's latest stored BCI with the last it
published; a newer one -- from a renewal, a request, or the operator's ``setpay ca revoke``
run on the same store by another process -- is published as a ``BCIDistribution`` (the BCI,
the Brand CA certificate, the CRLs it names) on the SET exchange under ``revocation.<brand>``.
At start every brand's current BCI is published once (a party that missed one while the CA
was down catches up; an equal BCI changes nothing at the receiver).
Rule 2: the BCI and the CRLs are read so that they agree (the BCI read again after the CRLs;
a change in between is read again), so a party never holds a BCI without the CRLs it names.
Rule 3: nobody bound to a brand's key (no gateway or merchant running) is not a failure: the
BCI counts as published. A broker failure leaves it unpublished for the next round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from actors.ca.hierarchy import Hierarchy, ca_name
from actors.trust import revocation_key
from broker.connection import Bus
from broker.errors import BrokerError, PeerUnavailable
from broker.topology import SET_EXCHANGE
from protocol import ids
from protocol.certs import certificate_der
from protocol.messages import BCIDistribution, MessageType
from protocol.wrapper import amqp_type, encode_message, make_header
from setpay.lifecycle import Periodic
from setpay.logs import get_logger

log = get_logger(component="ca.publisher")


class RevocationPublisher:
    """Publishes each brand's newest BCI once (Rules 1-3)."""

    def __init__(
        self,
        hierarchy: Hierarchy,
        bus: Bus,
        *,
        clock: ids.Clock,
        renew: Callable[[], Awaitable[None]],
        poll_seconds: float,
    ) -> None:
        self.h = hierarchy
        self.bus = bus
        self.clock = clock
        self.renew = renew
        self.poll_seconds = poll_seconds
        self.published: dict[str, int] = {}  # brand -> sequence last published
        self._rounds = Periodic("ca_publisher", self.tick, poll_seconds)

    def _current(self, brand: str) -> tuple[int, bytes, list[bytes]] | None:
        """(sequence, BCI, CRLs it names), read consistently (Rule 2)."""
        while True:
            latest = self.h.store.latest_bci(brand)
            if latest is None:
                return None
            crls = self.h.current_crls(brand)
            if self.h.store.latest_bci(brand) == latest:
                return latest[0], latest[1], crls

    async def publish(self, brand: str) -> bool:
        """Publish ``brand``'s newest BCI if not yet published; True if it went out."""
        current = self._current(brand)
        if current is None or current[0] <= self.published.get(brand, 0):
            return False
        seq, bci, crls = current
        brand_cert = certificate_der(self.h.cert(ca_name(brand, "brand")))
        body = BCIDistribution([brand_cert], crls, bci)
        wire = encode_message(make_header(self.clock.now_ms()), body)
        message = self.bus.message(wire, msg_type=amqp_type(MessageType.BCI_DISTRIBUTION))
        try:
            await self.bus.publish(revocation_key(brand), message, exchange=SET_EXCHANGE)
        except PeerUnavailable:
            log.info("ca_bci_unheard", brand=brand, sequence=seq)  # Rule 3
        self.published[brand] = seq
        log.info("ca_bci_published", brand=brand, sequence=seq, crls=len(crls))
        return True

    async def tick(self) -> int:
        """One round (Rule 1): renew, then publish what is new; the number published."""
        await self.renew()
        sent = 0
        for brand in self.h.brands():
            try:
                sent += await self.publish(brand)
            except BrokerError as exc:
                log.warning("ca_bci_publish_failed", brand=brand, error=type(exc).__name__)
        return sent

    def start(self) -> None:
        """Run rounds in the background every ``poll_seconds`` until ``stop``."""
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()
