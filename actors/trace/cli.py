"""`setpay trace record|show|check|diff|replay`: record and examine the SET traffic.

Rule 1: every command streams its trace (constant memory; ``check`` bounded by one window of
traffic, actors/trace/check.py Rule 5); ``diff`` holds one summary line per XID.
Rule 2: a truncated or corrupted trace is reported on stderr naming the byte offset, after
the records before it were shown or checked; the exit status is then 1.
Rule 3: exit status 0: nothing found; 1: violations, differences, a failed replay or a
corrupt file; 2: a usage or environment error (``CommandError``).
Rule 4: `replay` has two modes: ``--attack`` against the live environment (replay.py) and
``--regression --snapshot DIR`` against a fresh one restored from a snapshot (regression.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from actors.trace import check, record, replay, show
from actors.trace.fileformat import TraceCorrupt, TraceError
from broker.errors import BrokerError
from setpay.cli import CommandError
from setpay.config import Settings


def _corrupt(exc: TraceCorrupt) -> int:
    print(f"setpay trace: {exc}", file=sys.stderr)
    return 1


def _record(args: argparse.Namespace, settings: Settings) -> int:
    out = Path(args.output)
    if out.exists():
        raise CommandError(f"{out} exists: a trace is never overwritten")
    try:
        asyncio.run(record.record(settings, out, count=args.count, seconds=args.seconds))
    except BrokerError as exc:
        raise CommandError(str(exc)) from None
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    keep = show.Filter(args.type, args.xid, args.party)
    try:
        _, items = show.messages(Path(args.file))
        for text in show.show_lines(items, keep, args.json):
            print(text)
    except TraceCorrupt as exc:
        return _corrupt(exc)
    except TraceError as exc:
        raise CommandError(str(exc)) from None
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    checker = check.Checker(window_ns=int(args.window * 1e9))
    found = 0
    status = 0
    try:
        _, items = show.messages(Path(args.file))
        for violation in checker.run(items):
            found += 1
            print(violation)
    except TraceCorrupt as exc:
        for violation in checker.finish():
            found += 1
            print(violation)
        status = _corrupt(exc)
    except TraceError as exc:
        raise CommandError(str(exc)) from None
    print(f"{checker.messages} messages, {found} violations", file=sys.stderr)
    return 1 if found or status else 0


def _diff(args: argparse.Namespace, settings: Settings) -> int:
    try:
        summaries = [show.summarize(show.messages(Path(f))[1]) for f in (args.a, args.b)]
    except TraceCorrupt as exc:
        return _corrupt(exc)
    except TraceError as exc:
        raise CommandError(str(exc)) from None
    lines = list(show.diff(*summaries))
    for text in lines:
        print(text)
    return 1 if lines else 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    if args.attack == args.regression:
        raise CommandError("choose one mode: setpay trace replay FILE --attack, or "
                           "--regression --snapshot DIR")  # fmt: skip
    if args.regression:
        return _regression(args, settings)
    try:
        results = asyncio.run(replay.replay_attack(settings, Path(args.file),
                                                   timeout=args.timeout))  # fmt: skip
    except TraceCorrupt as exc:
        return _corrupt(exc)
    except (TraceError, BrokerError) as exc:
        raise CommandError(str(exc)) from None
    failed = [r for r in results if r.failed]
    print(f"{len(results)} requests replayed, {len(failed)} accepted", file=sys.stderr)
    return 1 if failed else 0


def _regression(args: argparse.Namespace, settings: Settings) -> int:
    from actors.supervisor import SupervisorError
    from actors.trace import regression

    if not args.snapshot:
        raise CommandError("--regression needs --snapshot DIR (`setpay snapshot save`)")
    if args.speed is not None and (args.as_fast_as_possible or args.speed <= 0):
        raise CommandError("--speed takes a factor above 0, and not with --as-fast-as-possible")
    results: list[regression.Compared] = []

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def report(c: regression.Compared) -> None:
        results.append(c)
        print(*c.lines(), sep="\n", flush=True)

    status = 0
    try:
        regression.replay_regression(settings, Path(args.file), Path(args.snapshot),
                                     speed=args.speed, timeout=args.timeout, report=report,
                                     say=say)  # fmt: skip
    except TraceCorrupt as exc:
        status = _corrupt(exc)
    except (TraceError, BrokerError, SupervisorError) as exc:
        raise CommandError(str(exc)) from None
    sent = [c for c in results if c.verdict != regression.SKIPPED]
    differ = [c for c in sent if c.failed]
    fields = sum(len(c.differences) for c in differ)
    print(f"{len(sent)} requests replayed, {len(results) - len(sent)} not replayable, "
          f"{len(differ)} answers differ ({fields} fields)", file=sys.stderr)  # fmt: skip
    return 1 if differ or status else 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `setpay trace ...` to the `setpay` parser."""
    trace = sub.add_parser("trace", help="record, show, check, diff and replay SET traffic")
    commands = trace.add_subparsers(dest="trace_command", metavar="COMMAND", required=True)
    rec = commands.add_parser("record", help="record the live environment's SET envelopes")
    rec.add_argument("-o", "--output", required=True, help="the new trace file")
    rec.add_argument("--count", type=int, help="stop after N messages")
    rec.add_argument("--seconds", type=float, help="stop after S seconds")
    rec.set_defaults(func=_record)
    sh = commands.add_parser("show", help="a line per message of a trace")
    sh.add_argument("file")
    sh.add_argument("--type", help="only this message type (e.g. PReq, AUTH_RES, Error)")
    sh.add_argument("--xid", help="only this transaction (hex prefix)")
    sh.add_argument("--party", help="only messages from or to this role or login")
    sh.add_argument("--json", action="store_true", help="one JSON object per line")
    sh.set_defaults(func=_show)
    ck = commands.add_parser("check", help="check protocol properties; violations by XID")
    ck.add_argument("file")
    ck.add_argument("--window", type=float, default=check.DEFAULT_WINDOW_NS / 1e9,
                    help="seconds of trace time a quiet transaction is remembered")  # fmt: skip
    ck.set_defaults(func=_check)
    df = commands.add_parser("diff", help="compare two traces by transaction (XID)")
    df.add_argument("a")
    df.add_argument("b")
    df.set_defaults(func=_diff)
    rp = commands.add_parser("replay", help="replay recorded requests against the environment")
    rp.add_argument("file")
    rp.add_argument(
        "--attack",
        action="store_true",
        help="every request again: each must be refused or answered as stored",
    )
    rp.add_argument("--regression", action="store_true",
                    help="against a fresh environment restored from --snapshot, on the trace's "
                    "clock: every answer compared with the recorded one")  # fmt: skip
    rp.add_argument("--snapshot", help="the snapshot of the environment that was recorded")
    rp.add_argument("--speed", type=float,
                    help="regression: the recorded timing scaled by this factor")  # fmt: skip
    rp.add_argument(
        "--as-fast-as-possible",
        action="store_true",
        help="regression: each request once the one before is answered (default)",
    )
    rp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait per answer")
    rp.set_defaults(func=_replay)
