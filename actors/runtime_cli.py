"""`setpay run ROLE [--id ID]`, `setpay up`, `setpay down`, `setpay status`: actors as
processes.

Rule 1: `run` runs one actor in the foreground until SIGTERM/SIGINT (in-flight work finishes).
Rule 2: `up` starts the test environment under a supervisor (background unless
`--foreground`) and waits for readiness; it fails at once if the supervisor stops or refuses
(another environment on the vhost). `down` stops it at any point of its start-up.
Rule 3: `up --replicas merchant=3,gateway=2` runs several processes of a role
(actors/supervisor.py Rule 6); `scale ROLE=N ...` changes the counts of a running environment
and waits until exactly those processes run and are ready.
"""

from __future__ import annotations

import argparse

from actors import supervisor
from setpay.cli import CommandError
from setpay.config import Settings


def _run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return supervisor.run_role(settings, args.role, args.id)
    except supervisor.SupervisorError as exc:
        raise CommandError(str(exc)) from None


def _roles(args: argparse.Namespace) -> list[str]:
    """``--roles`` as a list: absent means the whole environment, empty means none yet."""
    if args.roles is None:
        return list(supervisor.UP_ROLES)
    roles = [r for r in args.roles.split(",") if r]
    unknown = [r for r in roles if r not in supervisor.ROLES]
    if unknown:
        raise CommandError(f"unknown role(s): {', '.join(unknown)}")
    return roles


def _up(args: argparse.Namespace, settings: Settings) -> int:
    roles = _roles(args)
    try:
        replicas = supervisor.parse_replicas(args.replicas or "")
        if args.foreground:
            return supervisor.supervise(settings, roles, replicas=replicas)
        if roles and not any(supervisor.resolve(r) for r in roles):
            raise CommandError("none of the requested roles is available yet")
        pid = supervisor.start_detached(settings, roles, replicas=replicas)
        supervisor.wait_ready(settings, roles, args.timeout)
    except supervisor.SupervisorError as exc:
        raise CommandError(str(exc)) from None
    ready = [c.name for c in supervisor.wanted_children(roles, replicas)
             if supervisor.resolve(c.role)]  # fmt: skip
    print(f"up: supervisor pid {pid}; ready: {', '.join(ready) or 'no roles yet'}")
    return 0


def _scale(args: argparse.Namespace, settings: Settings) -> int:
    try:
        counts = supervisor.parse_replicas(",".join(args.counts))
        if not counts:
            raise CommandError("say how many of which role: setpay scale merchant=3 gateway=2")
        supervisor.set_replicas(settings, counts)
        running = supervisor.wait_scaled(settings, args.timeout)
    except supervisor.SupervisorError as exc:
        raise CommandError(str(exc)) from None
    print(f"scale: {len(running)} processes ready: {', '.join(running)}")
    return 0


def _down(args: argparse.Namespace, settings: Settings) -> int:
    outcome = supervisor.down(settings, grace=args.grace)
    for name, how in sorted(outcome.items()):
        print(f"{name}: {how}")
    if not outcome:
        print("down: nothing was running")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import json

    from actors import status

    report = asyncio.run(status.collect(settings, timeout=args.timeout))
    print(json.dumps(report.as_json()) if args.json else "\n".join(report.lines()))
    return report.code


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the actor runtime's subcommands."""
    run = sub.add_parser("run", help="run one actor in the foreground")
    run.add_argument("role", help=f"one of: {', '.join(sorted(supervisor.ROLES))}")
    run.add_argument("--id", help="instance name (identity is ROLE.ID)")
    run.set_defaults(func=_run)
    up = sub.add_parser("up", help="start the test environment as supervised processes")
    up.add_argument("--roles", help="comma-separated roles (default: the whole environment)")
    up.add_argument("--foreground", action="store_true", help="supervise in this process")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness")
    up.add_argument("--replicas", metavar="ROLE=N,...",
                    help="processes per role, e.g. merchant=3,gateway=2,keystore=2 (default 1)")
    up.set_defaults(func=_up)
    scale = sub.add_parser("scale", help="change how many processes of a role run")
    scale.add_argument("counts", nargs="+", metavar="ROLE=N", help="e.g. merchant=3 gateway=2")
    scale.add_argument("--timeout", type=float, default=90.0,
                       help="seconds to wait until exactly those processes run")  # fmt: skip
    scale.set_defaults(func=_scale)
    down = sub.add_parser("down", help="stop what `setpay up` started")
    down.add_argument("--grace", type=float, default=15.0, help="seconds before SIGKILL")
    down.set_defaults(func=_down)
    status = sub.add_parser(
        "status", help="what runs, where its pages and APIs answer, its health "
        "(exit 0 all ready, 1 degraded, 3 nothing runs)")  # fmt: skip
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument("--timeout", type=float, default=2.0,
                        help="seconds per front-door probe")  # fmt: skip
    status.set_defaults(func=_status)
