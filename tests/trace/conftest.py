"""One live environment for the trace tests: `setpay demo` in a throw-away vhost, then a
recording of purchases driven through the thin clients while `setpay trace record` runs.

Rule 1: the environment is tests/ops/environments.py's (own data dir, vhost, user prefix),
removed at the end of the package.
Rule 2: the recorder is the real command, started as a process; the purchases start only
after it announced it records (it waits out the tap's probe interval itself), and it is
stopped with SIGINT, as an operator's Ctrl-C would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors import demo_cases
from actors.environment import DEBIT_PIN, LOAD_PANS
from protocol.certs import load_certificate
from setpay.config import load
from tests.ops.environments import ROOT, SETPAY, Env, new_env, remove_env, wait_for


@pytest.fixture(scope="package")
def trace_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A running environment (after one `setpay demo`), removed at the end (Rule 1)."""
    env = new_env(tmp_path_factory.mktemp("trace-var"), "trace")
    try:
        proc = env.setpay("demo", timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield env
    finally:
        remove_env(env)


@dataclass(frozen=True)
class Recording:
    env: Env
    path: Path
    stderr: str
    outcomes: list[str]
    xids: list[bytes]


def start_recorder(env: Env, path: Path) -> subprocess.Popen[str]:
    """`setpay trace record -o path`, returned once it announced it records (Rule 2)."""
    proc = subprocess.Popen([*SETPAY, "trace", "record", "-o", str(path)], env=env.vars,
                            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)  # fmt: skip
    assert proc.stderr is not None
    for text in proc.stderr:
        if text.startswith("recording to"):
            return proc
    proc.wait(timeout=30)
    raise AssertionError(f"recorder ended ({proc.returncode}) before recording")


def stop_recorder(proc: subprocess.Popen[str]) -> str:
    """SIGINT the recorder; its remaining stderr (it must exit 0)."""
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read() if proc.stderr is not None else ""
    assert proc.wait(timeout=30) == 0, rest
    return rest


async def purchases(env: Env) -> tuple[list[str], list[bytes]]:
    """A credit purchase and its inquiry, an OPE debit with the right and the wrong PIN."""
    data_dir = Path(os.fspath(env.data_dir))
    root = load_certificate((data_dir / "wallet" / "root.der").read_bytes())
    wallet, pos = demo_cases.connect_clients(load(env.vars))
    try:
        erin = demo_cases.debit_shopper(wallet)
        alice = demo_cases.Shopper(wallet, "demo-alice", LOAD_PANS[0])
        await erin.card()
        await alice.card()
        credit = await alice.buy(pos, "M-1001", 1_100)
        inquiry = await (await alice.session()).inquire(credit.xid)
        right = await erin.debit(pos, "M-1002", 900, root, DEBIT_PIN)
        wrong = await erin.debit(pos, "M-1002", 900, root, demo_cases.WRONG_PIN)
    finally:
        await demo_cases.close_clients(wallet, pos)
    outcomes = [r.describe() for r in (credit, inquiry, right, wrong)]
    return outcomes, [credit.xid, right.xid, wrong.xid]


def _recorded_pres(path: Path) -> set[bytes]:
    """XIDs with a PRes in the trace at ``path`` so far (a frame being written is not yet)."""
    from actors.trace.fileformat import TraceError
    from actors.trace.show import messages
    from protocol.messages import MessageType

    found: set[bytes] = set()
    try:
        for m in messages(path)[1]:
            if m.msg_type is MessageType.PRES and m.xid is not None:
                found.add(m.xid)
    except (TraceError, OSError):
        pass
    return found


@pytest.fixture(scope="package")
def recording(trace_env: Env, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """A trace of `purchases` recorded by the real command (Rule 2)."""
    path = tmp_path_factory.mktemp("trace") / "purchases.trace"
    proc = start_recorder(trace_env, path)
    try:
        outcomes, xids = asyncio.run(purchases(trace_env))
        # The merchant's tap copy of a PRes may reach the recorder after the thin client has
        # its answer (over HTTPS there is no second bus hop to wait behind): stop recording
        # once the file holds every purchase's PRes.
        wait_for(lambda: _recorded_pres(path) >= set(xids), 30, "every PRes recorded")
    finally:
        stderr = stop_recorder(proc)
    return Recording(trace_env, path, stderr, outcomes, xids)
