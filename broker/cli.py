"""`setpay` subcommands of the broker layer: `setpay broker init|export-login|definitions|cluster`.

Rule 1: a password is never printed; ``export-login`` writes one identity's AMQP URL into a
new 0600 file (for systemd's ``LoadCredential=``: one OS user per role reads only its own).
Rule 2: `broker cluster start|status|stop|kill|boot` drive a local RabbitMQ cluster
(broker/localcluster.py) and print what an operator acts on: each node with its ports, up or
down, the running members, and the ``source <dir>/cluster.env`` line; a refusal (already
running, not started, unknown node) is one line, exit 2; ``status`` exits 1 while a node is
not a running member.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from broker import admin
from broker.admin import management_url
from broker.errors import BrokerError
from broker.localcluster import DEFAULT_DIR, Cluster
from broker.provision import init
from setpay.cli import CommandError
from setpay.config import Settings


def _init(args: argparse.Namespace, settings: Settings) -> int:
    admin.configure(management_url(settings.amqp_url, settings.broker_management_url),
                    settings.broker_admin_user, settings.broker_admin_password)  # fmt: skip
    try:
        report = asyncio.run(
            init(
                vhost=args.vhost or settings.broker_vhost,
                data_dir=settings.data_dir,
                base_url=settings.amqp_url,
                admin_user=settings.broker_admin_user,
                admin_password=settings.broker_admin_password,
                user_prefix=args.user_prefix or settings.broker_user_prefix,
                queue_type=settings.broker_queue_type,
            )
        )
    except BrokerError as exc:
        raise CommandError(str(exc)) from None
    for line in report.lines():
        print(line)
    return 0


def _export_login(args: argparse.Namespace, settings: Settings) -> int:
    from broker.provision import identity_url

    try:
        url = identity_url(settings.data_dir, args.identity, settings.broker_vhost,
                           settings.amqp_url, user_prefix=settings.broker_user_prefix)  # fmt: skip
    except BrokerError as exc:
        raise CommandError(str(exc)) from None
    out = Path(args.out)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise CommandError(f"cannot write {out}: {exc.strerror}") from None
    os.fchmod(fd, 0o600)  # an existing file keeps no wider mode
    with os.fdopen(fd, "w") as handle:
        handle.write(url + "\n")
    print(f"wrote the AMQP login of {args.identity} to {out} (mode 0600)")
    return 0


def _definitions(args: argparse.Namespace, settings: Settings) -> int:
    from broker.provision import GENERATED_JSON, definitions_json

    text = definitions_json(vhost=args.vhost or settings.broker_vhost,
                            user_prefix=args.user_prefix or settings.broker_user_prefix,
                            admin_user=settings.broker_admin_user)  # fmt: skip
    if args.write:
        GENERATED_JSON.write_text(text)
        print(f"wrote {GENERATED_JSON}")
    else:
        print(text, end="")
    return 0


def _node_line(node: dict[str, object]) -> str:
    state = "up" if node["up"] else "down"
    member = "running member" if node["member"] else "not a running member"
    pid = node["pid"] or "-"
    return (f"  {node['name']}  {state:<4}  pid {pid}  amqp 127.0.0.1:{node['amqp_port']}  "
            f"management http://127.0.0.1:{node['management_port']}  "
            f"dist {node['dist_port']}  {member}")  # fmt: skip


def _print_nodes(status: dict[str, object]) -> None:
    for node in status["nodes"]:  # type: ignore[attr-defined]
        print(_node_line(node))
    members = status["running_members"]
    print(f"running members: {', '.join(members) or 'none'}")  # type: ignore[arg-type]


def _cluster_start(args: argparse.Namespace, _settings: Settings) -> int:
    cluster = Cluster.start(args.size, Path(args.dir), prefix=args.prefix)
    print(f"started {len(cluster.nodes)} nodes in {cluster.dir}")
    _print_nodes(cluster.status())
    print(f"admin user {cluster.admin_user}, password in {cluster.password_file} (mode 0600)")
    print(f"use it:  source {cluster.env_file}")
    return 0


def _cluster_status(args: argparse.Namespace, _settings: Settings) -> int:
    status = Cluster.load(Path(args.dir)).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"cluster in {status['dir']}")
        _print_nodes(status)
        print(f"use it:  source {status['env_file']}")
    return 0 if all(n["member"] for n in status["nodes"]) else 1


def _cluster_stop(args: argparse.Namespace, _settings: Settings) -> int:
    cluster = Cluster.load(Path(args.dir))
    cluster.stop()
    print(f"stopped {', '.join(n.name for n in cluster.nodes)}; removed {cluster.dir}")
    return 0


def _cluster_kill(args: argparse.Namespace, _settings: Settings) -> int:
    node = Cluster.load(Path(args.dir)).kill(args.node)
    print(f"killed {node.name} (SIGKILL)")
    return 0


def _cluster_boot(args: argparse.Namespace, _settings: Settings) -> int:
    cluster = Cluster.load(Path(args.dir))
    node = cluster.boot(args.node)
    print(f"booted {node.name}; running members: {', '.join(cluster.running_members())}")
    return 0


def _register_cluster(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cluster = commands.add_parser(
        "cluster", help="a local RabbitMQ cluster of its own (nodes on 127.0.0.1, one directory)"
    )
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="boot and join the nodes, write cluster.env")
    start.add_argument("--size", type=int, default=3, help="nodes (default 3)")
    start.add_argument("--prefix", default="setpay", help="node names <prefix>-N@localhost")
    start.set_defaults(func=_cluster_start)
    status = actions.add_parser("status", help="each node up/down, its ports, running members")
    status.add_argument("--json", action="store_true", help="machine output")
    status.set_defaults(func=_cluster_status)
    actions.add_parser("stop", help="stop every node, remove the directory").set_defaults(
        func=_cluster_stop
    )
    for name, func, what in (
        ("kill", _cluster_kill, "SIGKILL one node (a crash)"),
        ("boot", _cluster_boot, "start a killed node, wait until it rejoined"),
    ):
        action = actions.add_parser(name, help=what)
        action.add_argument("node", help="its number (2), name (setpay-2) or full name")
        action.set_defaults(func=func)
    for action in actions.choices.values():
        action.add_argument(
            "--dir",
            default=str(DEFAULT_DIR),
            help=f"the cluster's directory (default {DEFAULT_DIR})",
        )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this layer's subcommands to the `setpay` parser."""
    broker = sub.add_parser("broker", help="RabbitMQ administration")
    commands = broker.add_subparsers(dest="broker_command", metavar="COMMAND", required=True)
    init_parser = commands.add_parser(
        "init", help="apply deploy/rabbitmq definitions: vhost, users, permissions, policies"
    )
    init_parser.add_argument("--vhost", help="vhost to set up (default: settings.broker_vhost)")
    # Users are broker-wide: tests namespace theirs so they never touch the real identities.
    init_parser.add_argument("--user-prefix", default="", help=argparse.SUPPRESS)
    init_parser.set_defaults(func=_init)
    defs = commands.add_parser(
        "definitions",
        help="deploy/rabbitmq/definitions.toml as RabbitMQ definitions JSON "
        "(for rabbitmqctl import_definitions or load_definitions; users without passwords)",
    )
    defs.add_argument("--json", action="store_true", help="JSON (the only format; default)")
    defs.add_argument("--vhost", help="vhost to name (default: settings.broker_vhost)")
    defs.add_argument("--user-prefix", default="", help=argparse.SUPPRESS)
    defs.add_argument(
        "--write",
        action="store_true",
        help="write deploy/rabbitmq/definitions.json instead of printing",
    )
    defs.set_defaults(func=_definitions)
    export = commands.add_parser(
        "export-login", help="write one identity's AMQP URL (with its password) to a 0600 file"
    )
    export.add_argument("identity", help="<role>.<instance>, e.g. gateway.pg1")
    export.add_argument("out", help="file to write (e.g. /etc/setpay/credentials/gateway.url)")
    export.set_defaults(func=_export_login)
    _register_cluster(commands)
