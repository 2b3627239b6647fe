"""`setpay broker cluster start|status|kill|boot|stop` on a real three-node cluster of its own
(broker/localcluster.py), through the real command: every listener on 127.0.0.1, the files an
operator sources (cluster.env and the admin password 0600, the password printed nowhere), a
node killed with SIGKILL leaves two running members and is refused a second kill, booted again
it is a running member once more, and stop leaves no process and no directory behind. Refusals
(already running, unknown node, no cluster) are one line, exit 2.

Rule 1: one cluster per module (unique node names, a directory under the system temporary
directory since the broker's own user must reach it), stopped and removed afterwards, also
when a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.connection import connect
from broker.localcluster import Cluster, ClusterError, alive, registered_names
from setpay.config import login_url
from tests.ops.environments import ROOT, SETPAY

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cluster_cmd(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``setpay broker cluster ARGS --dir DIRECTORY``, run to its end."""
    return subprocess.run([*SETPAY, "broker", "cluster", *args, "--dir", str(directory)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip


def status(directory: Path) -> tuple[int, dict[str, Any]]:
    done = cluster_cmd(directory, "status", "--json")
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def started() -> Iterator[tuple[Path, str, str]]:
    """The cluster's directory, its node name prefix and the output of its start."""
    directory = Path(tempfile.mkdtemp(prefix="setpay-cluster-t"))
    prefix = f"setpay-t{secrets.token_hex(3)}"
    try:
        done = cluster_cmd(directory, "start", "--prefix", prefix)
        assert done.returncode == 0, done.stdout + done.stderr
        yield directory, prefix, done.stdout
    finally:
        if (directory / "cluster.json").exists():
            Cluster.load(directory).stop()
        shutil.rmtree(directory, ignore_errors=True)


def listening_ports() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket on this machine (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                address, port = local.split(":")
                found.add((address, int(port, 16)))
    return found


def test_start_binds_loopback_and_writes_the_files_an_operator_sources(
    started: tuple[Path, str, str],
) -> None:
    directory, prefix, output = started
    cluster = Cluster.load(directory)
    names = [n.name for n in cluster.nodes]
    assert names == [f"{prefix}-{n}@localhost" for n in (1, 2, 3)]
    ports = [p for n in cluster.nodes for p in (n.port, n.management_port, n.dist_port)]
    assert len(set(ports)) == 9
    listening = listening_ports()
    for port in ports:  # every listener of every node, on 127.0.0.1 only
        assert [a for a, p in listening if p == port] == ["0100007F"], port
    assert f"source {directory}/cluster.env" in output
    assert all(name in output for name in names)

    env_file, password_file = directory / "cluster.env", directory / "admin.password"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 24
    for text in (output, env_file.read_text(), (directory / "cluster.json").read_text()):
        assert password not in text
    exported = dict(line.removeprefix("export ").split("=", 1)
                    for line in env_file.read_text().splitlines()
                    if line.startswith("export "))  # fmt: skip
    first, second, third = cluster.nodes
    assert exported["SETPAY_AMQP_URL"] == (
        f"'amqp://127.0.0.1:{first.port}/?failover=127.0.0.1:{second.port},127.0.0.1:{third.port}'"
    )
    assert exported["SETPAY_BROKER_ADMIN_PASSWORD_FILE"] == str(password_file)
    assert exported["SETPAY_BROKER_MANAGEMENT_URL"] == f"http://127.0.0.1:{first.management_port}"
    state = json.loads((directory / "cluster.json").read_text())
    assert [n["pid"] for n in state["nodes"]] == [n.pid() for n in cluster.nodes]

    # The wrapper is rabbitmqctl on this cluster: only the admin user, no guest.
    users = subprocess.run([exported["SETPAY_RABBITMQCTL"], "-q", "list_users"],
                           capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    assert [line.split()[0] for line in users.stdout.splitlines()[1:]] == ["setpay-admin"]


async def test_the_admin_logs_in_through_the_failover_url(started: tuple[Path, str, str]) -> None:
    cluster = Cluster.load(started[0])
    password = cluster.password_file.read_text().strip()
    bus = await connect(login_url(cluster.amqp_url, cluster.admin_user, password, "/"), name="t")
    try:
        assert bus.connection.url.port == cluster.nodes[0].port  # type: ignore[attr-defined]
    finally:
        await bus.close()


def test_kill_leaves_two_running_members_and_boot_rejoins(
    started: tuple[Path, str, str],
) -> None:
    directory, _prefix, _output = started
    code, before = status(directory)
    assert code == 0 and len(before["running_members"]) == 3, before
    first = before["nodes"][0]

    killed = cluster_cmd(directory, "kill", "1")
    assert killed.returncode == 0 and first["name"] in killed.stdout, killed.stderr
    assert not alive(first["pid"])
    code, after = status(directory)
    assert code == 1, after
    assert after["running_members"] == [n["name"] for n in before["nodes"][1:]]
    assert [(n["up"], n["member"]) for n in after["nodes"]] == [(False, False), (True, True),
                                                              (True, True)]  # fmt: skip
    # the node in cluster.env's management URL is down: rabbitmqctl's wrapper takes a live one
    ctl = Cluster.load(directory).rabbitmqctl
    members = subprocess.run([str(ctl), "-q", "cluster_status", "--formatter", "json"],
                             capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    assert sorted(json.loads(members.stdout)["running_nodes"]) == after["running_members"]
    again = cluster_cmd(directory, "kill", first["name"])
    assert again.returncode == 2 and "is not running" in again.stderr, again.stderr
    unknown = cluster_cmd(directory, "kill", "7")
    assert unknown.returncode == 2 and "unknown node '7'" in unknown.stderr, unknown.stderr
    twice = cluster_cmd(directory, "start")
    assert twice.returncode == 2 and "already runs" in twice.stderr, twice.stderr

    booted = cluster_cmd(directory, "boot", "1")
    assert booted.returncode == 0, booted.stdout + booted.stderr
    code, back = status(directory)
    assert code == 0 and back["running_members"] == before["running_members"], back
    assert back["nodes"][0]["pid"] != first["pid"] and alive(back["nodes"][0]["pid"])
    up = cluster_cmd(directory, "boot", "2")
    assert up.returncode == 2 and "already running" in up.stderr, up.stderr


def test_start_refuses_a_taken_name_or_a_foreign_directory(
    started: tuple[Path, str, str],
    tmp_path: Path,
) -> None:
    _directory, prefix, _output = started
    with pytest.raises(ClusterError, match=f"node {prefix}-1@localhost already runs"):
        Cluster.start(3, tmp_path / "other", prefix=prefix)
    assert not (tmp_path / "other").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ClusterError, match="holds no cluster"):
        Cluster.start(3, tmp_path / "mine", prefix="setpay-unused")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_stop_leaves_no_process_and_no_directory(started: tuple[Path, str, str]) -> None:
    directory, prefix, _output = started
    pids = [n["pid"] for n in json.loads((directory / "cluster.json").read_text())["nodes"]]
    assert all(alive(pid) for pid in pids)
    done = cluster_cmd(directory, "stop")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not any(alive(pid) for pid in pids)
    assert not directory.exists()
    assert not {f"{prefix}-{n}" for n in (1, 2, 3)} & registered_names()
    gone = cluster_cmd(directory, "status")
    assert gone.returncode == 2 and "no cluster in" in gone.stderr, gone.stderr
    assert not os.path.exists(directory)
