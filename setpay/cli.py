"""The ``setpay`` command. Each layer contributes its subcommands through ``register()``.

A command module exposes ``register(subparsers)``; each parser it adds sets
``func(args, settings) -> int``. Errors a user can fix are printed as one line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from setpay import __version__, config, logs

COMMAND_MODULES = ("keystore.cli", "broker.cli", "actors.cli", "bench.cli")


class CommandError(Exception):
    """A command failed for a reason the user can act on; the message says which."""


def _cmd_config(args: argparse.Namespace, settings: config.Settings) -> int:
    described = settings.describe()
    if args.json:
        print(json.dumps(described, indent=2))
    else:
        width = max(map(len, described))
        for name, value in described.items():
            print(f"{name.ljust(width)}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="setpay", description="SET/OPE payments over RabbitMQ")
    parser.add_argument("--version", action="version", version=f"setpay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cfg = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    cfg.add_argument("--json", action="store_true", help="print as JSON")
    cfg.set_defaults(func=_cmd_config)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = config.load()
        logs.configure(settings.log_format, settings.log_level)
        return int(args.func(args, settings) or 0)
    except (config.ConfigError, CommandError) as exc:
        print(f"setpay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
