"""`setpay bench …`: each benchmark module adds its own subcommand through ``add_parser``."""

from __future__ import annotations

import argparse
import importlib

BENCH_MODULES = ("bench.protocol", "bench.keystore", "bench.broker", "bench.ca")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``setpay bench`` and the subcommands of every benchmark module."""
    bench = sub.add_parser("bench", help="measure throughput and latency against raw costs")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).add_parser(bench_sub)
