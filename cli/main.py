"""The ``setpay`` command: one parser made of every layer's subcommands.

Rule 1: each layer's CLI module is imported here by name and adds its subcommands through
``register(subparsers)``; each parser it adds sets ``func(args, settings) -> int``.
Rule 2: configuration is loaded and logging and the process's clock configured here, once,
before any command runs.
Rule 3: errors a user can fix (``setpay.cli.CommandError``, ``ConfigError``) and a service or
broker that is down or refuses (``BrokerError``, ``ApiError``, ``KeystoreError``) are printed as
one line, exit 2; configuration is validated when loaded (allowed values, misspelt names).
Rule 6: output cut short by its reader (``setpay … | head``) ends quietly.
Rule 5: `setpay bench ARGS` runs `python -m bench ARGS` as a child (bench/ is imported by
nothing, this entry included), with this process's umask and environment.
Rule 4: every file a `setpay` command or its children create is private to the user that
runs it: the umask is ``UMASK`` (0o077: files 0600, directories 0700) before anything runs.
Children, the keystore's workers and tools like softhsm2-util inherit it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence

import actors.cli
import actors.demo
import actors.trace.cli
import broker.cli
import keystore.cli
from actors.web.client import ApiError
from broker.errors import BrokerError
from keystore.errors import KeystoreError
from setpay import __version__, clock, config, logs, store
from setpay.cli import CommandError

UMASK = 0o077
# A service or the broker down, or refusing: one readable line (their texts name no secret).
UNREACHABLE = (BrokerError, ApiError, KeystoreError)
COMMAND_MODULES = (keystore.cli, broker.cli, actors.cli, actors.demo, actors.trace.cli)


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
    """The ``setpay`` parser with every layer's subcommands."""
    parser = argparse.ArgumentParser(prog="setpay", description="SET/OPE payments over RabbitMQ")
    parser.add_argument("--version", action="version", version=f"setpay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cfg = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    cfg.add_argument("--json", action="store_true", help="print as JSON")
    cfg.set_defaults(func=_cmd_config)
    sub.add_parser("bench", help="measure throughput and latency against raw costs (Rule 5)")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``setpay`` command; its exit status."""
    os.umask(UMASK)  # Rule 4
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["bench"]:  # Rule 5
        # the user's own arguments, for the user's own interpreter: nothing untrusted
        command = [sys.executable, "-m", "bench", *given[1:]]
        return subprocess.run(command, check=False).returncode  # noqa: S603
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = config.load()
        logs.configure(settings.log_format, settings.log_level)
        store.use_database(settings.store_url, settings.data_dir)  # setpay/store.py Rule 6
        clock.configure(settings.clock)  # the process's one clock (setpay/clock.py Rule 1)
        return int(args.func(args, settings) or 0)
    except (config.ConfigError, CommandError, *UNREACHABLE) as exc:
        print(f"setpay: {exc}", file=sys.stderr)  # Rule 3: one line, no traceback
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Rule 6: `setpay … | head` ends quietly: nothing more to write, and the interpreter's
        # own flush at exit must not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
