"""Extra RabbitMQ nodes of the tests' own, on this machine: broker/localcluster.py's nodes
(their own name, ports, data and log directories, config and plugin list), re-exported here
for the tests, plus the test CA's server certificate a TLS-only node serves (made with the
web layer's test CA, which the broker layer must not import).

Used for a broker that listens only on TLS (tests/broker/test_tls_broker.py) and for a
three-node cluster (tests/broker/test_cluster.py)."""

from __future__ import annotations

from pathlib import Path

from actors.web import tls
from broker import localcluster
from broker.localcluster import Cluster, Node, TlsFiles, start_cluster
from setpay.config import Settings

__all__ = ["Cluster", "Node", "start_cluster", "start_node"]


def server_certificate(directory: Path) -> TlsFiles:
    """The test CA and a server certificate for 127.0.0.1, made under ``directory``."""
    settings = Settings(data_dir=directory / "pki")
    tls.ensure_test_certificate(settings)
    cert, key = tls.server_files(settings)
    return TlsFiles(tls.ca_file(settings), cert, key)


def start_node(*, tls_listener: bool = False) -> Node:
    """A node of its own, booted (about ten seconds); with ``tls_listener`` it has no plain
    AMQP listener, only AMQPS with the test CA's server certificate for 127.0.0.1."""
    return localcluster.start_node(tls=server_certificate if tls_listener else None)
