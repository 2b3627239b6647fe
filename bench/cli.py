"""`setpay bench …`: each benchmark module adds its own subcommand through ``add_parser``."""

from __future__ import annotations

import argparse

import bench.auth
import bench.broker
import bench.ca
import bench.keystore
import bench.protocol

BENCH_MODULES = (bench.protocol, bench.keystore, bench.broker, bench.ca, bench.auth)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``setpay bench`` and the subcommands of every benchmark module."""
    parser = sub.add_parser("bench", help="measure throughput and latency against raw costs")
    bench_sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for module in BENCH_MODULES:
        module.add_parser(bench_sub)
