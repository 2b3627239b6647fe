"""`setpay bench …`: each benchmark module adds its own subcommand through ``add_parser``.

Rule 1: bench/ sits above everything and nothing imports it: the `setpay` entry (cli/main.py)
runs `python -m bench ARGS` as a child process for `setpay bench ARGS`, so the product's
modules never load measurement code.
Rule 2: like the entry, this program loads the configuration and configures logging once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import bench.auth
import bench.batch
import bench.broker
import bench.ca
import bench.keystore
import bench.protocol
import bench.trace
from setpay import config, logs
from setpay.cli import CommandError

BENCH_MODULES = (
    bench.protocol,
    bench.keystore,
    bench.broker,
    bench.ca,
    bench.auth,
    bench.batch,
    bench.trace,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``setpay bench`` parser with the subcommands of every benchmark module."""
    parser = argparse.ArgumentParser(
        prog="setpay bench", description="measure throughput and latency against raw costs"
    )
    bench_sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for module in BENCH_MODULES:
        module.add_parser(bench_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark (Rule 2); its exit status."""
    args = build_parser().parse_args(argv)
    try:
        settings = config.load()
        logs.configure(settings.log_format, settings.log_level)
        return int(args.func(args, settings) or 0)
    except (config.ConfigError, CommandError) as exc:
        print(f"setpay bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
