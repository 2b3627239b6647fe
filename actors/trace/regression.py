"""``setpay trace replay FILE --regression --snapshot DIR``: yesterday's traffic against
today's code, answer by answer.

Rule 1: the snapshot of the environment that produced the trace (actors/snapshot.py) is
restored into the configured data dir, which must hold no environment, on the configured
vhost (provisioned as `setpay broker init` does), and started by a supervisor as `setpay up`
would; it is stopped again at the end, whatever happened (its data dir stays, to look at).
Rule 2: the restored environment runs on the trace's clock: ``SETPAY_CLOCK=offset:<ms>``
(setpay/clock.py) with the offset that puts its clock, at the moment it is started, at the
wrapper date of the trace's first replayed request. Time then passes as usual, so a
recorded request's date is off the environment's clock by the start-up time, plus (as fast
as possible) its distance from the first one, or (``--speed F``) that distance times
``1 - 1/F``: inside every party's 5-minute freshness window for a trace shorter than the
window, whatever its age.
Rule 3: which recorded requests are replayed (``replayable``): those whose answer depends
only on the request and on the restored state. A request to the merchant's POS is not:
PInitReq names an order (LID-M) the operator created over HTTPS after the snapshot, which is
not in the trace; PReq and InqReq carry the XID and Chall-M the POS drew for the recorded
PInitRes, which the restored POS never drew. Nor are CertReq and CertInqReq to the CA: they
answer the CA's registration challenge of the recorded run. They are listed as not
replayed, with that reason, and are no difference. Every other request (the gateway's
AuthReq, AuthRevReq, CapReq, CapRevReq, CredReq, CredRevReq, BatchAdminReq, PCertReq; the
CA's CardCInitReq, Me-AqCInitReq, RegFormReq) is sent as the attack mode sends it (its
recorded bytes, type and routing key, as the login that sent it), in trace order, each
after the answer to the one before.
Rule 4: each answer is compared with the one the trace recorded for that request
(actors/trace/compare.py: field by field, with dates, signatures, ciphertexts and ids the
responder made fresh normalised); each difference is listed by XID, type and field, and so
is a request answered in the trace but not now, or the other way round.
Rule 5: a truncated or corrupted trace is replayed up to the bad frame; ``TraceCorrupt``
then names its offset (the environment is stopped first).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from actors import snapshot, supervisor
from actors.trace.compare import Difference, compare
from actors.trace.fileformat import TraceCorrupt, TraceError, read_trace
from actors.trace.replay import Senders, requests
from actors.trace.wire import is_request, parse_wrapper, short, view
from protocol.errors import ProtocolError
from protocol.messages import MessageType as M
from setpay.config import Settings

READY_TIMEOUT = 240.0
NOT_REPLAYABLE: dict[M, str] = {
    M.PINIT_REQ: "names an order the POS operator created over HTTPS (not in the trace)",
    M.PREQ: "carries the XID and Chall-M the POS drew for the recorded PInitRes",
    M.INQ_REQ: "asks about an XID the POS drew for the recorded PInitRes",
    M.CERT_REQ: "answers the CA's registration challenge of the recorded run",
    M.CERT_INQ_REQ: "asks about a CertReq of the recorded run",
}
SAME, DIFFERENT, SKIPPED = "same", "DIFFERENT", "not replayed"


@dataclass(frozen=True, slots=True)
class Compared:
    """One recorded request and how its answer compared (Rule 4)."""

    xid: bytes | None
    msg_type: str
    routing_key: str
    verdict: str
    differences: list[Difference] = field(default_factory=list)
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict == DIFFERENT

    def lines(self) -> list[str]:
        head = f"{short(self.xid):<16} {self.msg_type:<16} -> {self.routing_key:<20} {self.verdict}"
        if not self.differences:
            return [f"{head} {self.detail}".rstrip()]
        return [head, *(f"    {d}" for d in self.differences)]


def replayable(msg_type: M | None) -> str | None:
    """None if a request of this type is replayed, else why not (Rule 3)."""
    if msg_type is None:
        return "not a SET wrapper"
    return NOT_REPLAYABLE.get(msg_type)


def trace_clock_ms(path: Path) -> int:
    """The wrapper date of the trace's first replayable request (Rule 2); the header's start
    when there is none."""
    header, records = read_trace(path)
    try:
        for offset, rec in records:
            m = view(offset, rec, header.user_prefix)
            if m.msg_type is not None and is_request(m.msg_type) and not replayable(m.msg_type):
                return parse_wrapper(rec.body)[0].date
    except (TraceCorrupt, ProtocolError):
        pass
    return header.started_ms


def _compare(request: bytes, recorded: list[bytes], kind: str,
             answer: bytes | str) -> tuple[str, list[Difference], str]:  # fmt: skip
    if not isinstance(answer, bytes):
        if not recorded:
            return SAME, [], "(unanswered in the trace too)"
        return DIFFERENT, [Difference("answer", "recorded", f"{kind} {answer}")], ""
    if not recorded:
        return DIFFERENT, [Difference("answer", "none recorded", "answered now")], ""
    differences = compare(recorded[0], answer, request)
    return (DIFFERENT if differences else SAME), differences, ""


async def _replay(settings: Settings, path: Path, *, speed: float | None, timeout: float,
                  report: Callable[[Compared], None]) -> list[Compared]:  # fmt: skip
    senders = Senders(settings, timeout)
    results: list[Compared] = []
    t0: int | None = None
    started = time.monotonic()
    try:
        for m, rec, recorded in requests(path):
            why = replayable(m.msg_type)
            if why is not None:
                result = Compared(m.txn, m.type_name, rec.routing_key, SKIPPED, [], f"({why})")
            else:
                if speed is not None:
                    t0 = rec.t_ns if t0 is None else t0
                    due = started + (rec.t_ns - t0) / 1e9 / speed
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                kind, answer = await senders.send(rec)
                verdict, differences, detail = _compare(rec.body, recorded, kind, answer)
                result = Compared(m.txn, m.type_name, rec.routing_key, verdict, differences,
                                  detail)  # fmt: skip
            results.append(result)
            report(result)
    finally:
        await senders.close()
    return results


def replay_regression(
    settings: Settings, path: Path, snapshot_dir: Path, *, speed: float | None = None,
    timeout: float = 30.0, report: Callable[[Compared], None] = lambda c: print(*c.lines(),
    sep="\n"), say: Callable[[str], None] = print,
) -> list[Compared]:  # fmt: skip
    """Restore, start on the trace's clock, replay, compare, stop (Rules 1-5)."""
    header, _ = read_trace(path)  # unusable at once: nothing restored
    if settings.broker_user_prefix != header.user_prefix:
        raise TraceError(
            f"the trace's logins carry user prefix {header.user_prefix!r}, the settings "
            f"{settings.broker_user_prefix!r}: set SETPAY_BROKER_USER_PREFIX to the trace's"
        )
    done = snapshot.restore(settings, snapshot_dir)
    say(f"restored {done.files} files into {settings.data_dir}; vhost {settings.broker_vhost}")
    offset = trace_clock_ms(path) - time.time_ns() // 1_000_000
    try:
        supervisor.start_detached(settings, supervisor.UP_ROLES,
                                  extra_env={"SETPAY_CLOCK": f"offset:{offset}"})  # fmt: skip
        supervisor.wait_ready(settings, supervisor.UP_ROLES, READY_TIMEOUT)
        say(f"up on the trace's clock (offset {offset / 86_400_000:+.3f} days)")
        return asyncio.run(_replay(settings, path, speed=speed, timeout=timeout,
                                   report=report))  # fmt: skip
    finally:
        supervisor.down(settings, grace=10.0)
