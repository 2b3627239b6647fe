"""Regression replay: the package's environment snapshotted while stopped, its purchases
recorded, then the trace replayed against fresh environments restored from the snapshot
(actors/trace/regression.py, actors/snapshot.py).

Rule 1: one test, one recording (`setpay demo` run again on the environment: approved,
declined, expired and stolen cards, a sale, OPE debits and an inquiry; then the package's
`purchases` (a credit purchase and its inquiry, an OPE debit with the right and the wrong PIN)
and a credit purchase with a card of its own, enrolled before the snapshot; all through the
thin clients while `setpay trace record` runs), two restores:
 - the snapshot as saved: every replayed request answered as recorded (zero differences);
   the merchant-bound requests listed as not replayable, with the reason;
 - the snapshot with one card account's balance raised to its limit at the issuer host
   (restored, changed, saved again with `setpay snapshot`'s own functions), a card only one
   purchase of the recording pays with: exactly that purchase's authorization differs, and
   the report says how (the AuthRes carries no CapToken);
   this replay follows the recorded pace at twice its speed (``--speed 2``).
Rule 2: each restored environment runs on its own vhost, data dir and ports with the
recorded environment's user prefix (its keys and logins carry it); the package's environment
is stopped meanwhile (two environments on two cores would only slow both). The restored
vhosts are deleted at the end; the users are the package environment's, removed with it.
Rule 3: the restored environment ran on the trace's clock: its logs show the offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
from pathlib import Path

import pytest

from actors import demo_cases, snapshot
from actors.environment import ISSUER_INSTANCE, LOAD_PANS
from actors.trace.regression import DIFFERENT, SAME
from broker import admin
from setpay.config import load
from tests.ops.environments import Env, new_env, wait_for
from tests.trace.conftest import _recorded_pres, purchases, start_recorder, stop_recorder

pytestmark = pytest.mark.integration
OWN_PAN = LOAD_PANS[1]  # a load-test card: neither the demo's cases nor `purchases` use it


def _drop(env: Env) -> None:
    """Stop what ``env`` may still run and delete its vhost (its users are the package's)."""
    env.setpay("down", "--grace", "5", timeout=120)
    for pid in env.processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(admin.AdminError):
        if env.vhost in admin.list_vhosts():
            admin.delete_vhost(env.vhost)


def _replay(trace_env: Env, tmp: Path, tag: str, trace: Path, snap: Path,
            *pace: str) -> tuple[int, str, str]:  # fmt: skip
    env = new_env(tmp / tag, tag, SETPAY_BROKER_USER_PREFIX=trace_env.prefix)
    try:
        proc = env.setpay("trace", "replay", str(trace), "--regression", "--snapshot", str(snap),
                          "--timeout", "60", *pace, timeout=900)  # fmt: skip
        logs = "".join(p.read_text(errors="replace")
                       for p in (env.data_dir / "run").glob("*.log"))  # fmt: skip
        return proc.returncode, proc.stdout, proc.stderr + logs
    finally:
        _drop(env)


def _raise_balance(snap: Path, edited: Path, tmp: Path, prefix: str, last4: str) -> None:
    """Restore ``snap``'s files, set the card ending ``last4`` at its limit, save ``edited``."""
    settings = load({"SETPAY_CONFIG": "", "SETPAY_DATA_DIR": str(tmp / "edit"),
                     "SETPAY_BROKER_USER_PREFIX": prefix})  # fmt: skip
    snapshot.restore_files(settings, snap)
    db = settings.data_dir / "issuer" / f"{ISSUER_INSTANCE}.sqlite"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        changed = conn.execute(
            "UPDATE accounts SET balance = credit_limit - 500 WHERE last4 = ? AND kind = 'card'"
            " AND brand = 'alpha' AND credit_limit >= 1000000000000",
            (last4,),
        ).rowcount
    assert changed == 1
    snapshot.save(settings, edited)


async def _own_purchase(env: Env, *, enrol_only: bool = False) -> tuple[bytes, str]:
    """A credit purchase with a card nothing else in the recording pays with (enrolled first:
    a card enrolled already is found, not enrolled again)."""
    wallet, pos = demo_cases.connect_clients(load(env.vars))
    try:
        frank = demo_cases.Shopper(wallet, "regr-frank", OWN_PAN)
        await frank.card()
        if enrol_only:
            return b"", ""
        result = await frank.buy(pos, "M-1001", 1_300)
    finally:
        await demo_cases.close_clients(wallet, pos)
    return result.xid, result.describe()


def test_regression_replay_zero_differences_then_exactly_the_changed_account(
    trace_env: Env, tmp_path: Path
) -> None:
    env = trace_env
    snap, trace = tmp_path / "snap", tmp_path / "purchases.trace"
    asyncio.run(_own_purchase(env, enrol_only=True))  # no registration in the recording
    assert env.setpay("down", timeout=120).returncode == 0
    saved = env.setpay("snapshot", "save", str(snap))
    assert saved.returncode == 0, saved.stderr
    up = env.setpay("up", "--timeout", "240", timeout=300)
    assert up.returncode == 0, up.stderr
    proc = start_recorder(env, trace)
    try:
        demo = env.setpay("demo", timeout=600)  # the demo again, on the running environment
        rows = re.search(r"(\d+) of (\d+) rows as expected", demo.stdout)
        assert demo.returncode == 0 and rows and rows[1] == rows[2], demo.stdout
        outcomes, xids = asyncio.run(purchases(env))
        own, outcome = asyncio.run(_own_purchase(env))
        xids.append(own)
        wait_for(lambda: _recorded_pres(trace) >= set(xids), 30, "every PRes recorded")
    finally:
        stop_recorder(proc)
    env.setpay("down", timeout=120)
    credit, debit_ok, debit_wrong, own = xids
    assert outcomes[0] == outcome == "AUTHORIZATION_PERFORMED/APPROVED", (outcomes, outcome)

    rc, out, err = _replay(env, tmp_path, "regr", trace, snap)
    assert rc == 0, out + err[-3000:]
    lines = out.splitlines()
    auth = [line for line in lines if " AUTH_REQ " in line]
    assert len(auth) >= 7 + 3 + 1 and all(line.split()[-1] == SAME for line in auth), out
    assert all(line.split()[-1] == SAME for line in lines if " -> " in line
               and "not replayed" not in line), out  # fmt: skip
    skipped = [line for line in lines if "not replayed" in line]
    assert {"PINIT_REQ", "PREQ", "INQ_REQ"} <= {line.split()[1] for line in skipped}, out
    assert " 0 answers differ" in err, err[-2000:]
    assert "up on the trace's clock" in err

    edited = tmp_path / "snap-edited"
    _raise_balance(snap, edited, tmp_path, env.prefix, OWN_PAN[-4:])
    rc, out, err = _replay(env, tmp_path, "regr-edit", trace, edited, "--speed", "2")
    assert rc == 1, out + err[-3000:]
    heads = [line for line in out.splitlines() if not line.startswith("    ")]
    differing = [line for line in heads if line.split()[-1] == DIFFERENT]
    assert [line.split()[0] for line in differing] == [own[:8].hex()], out
    assert differing[0].split()[1] == "AUTH_REQ"
    how = out.split(differing[0], 1)[1].splitlines()[1:]
    how = [line.strip() for line in how if line.startswith("    ")]
    assert "body.enc.baggage.cap_token: recorded present (opaque) | replayed absent" in how, out
    for xid in (credit, debit_ok, debit_wrong):
        mine = [line for line in heads if line.startswith(xid[:8].hex()) and "AUTH_REQ" in line]
        assert mine and mine[0].split()[-1] == SAME, out
    assert " 1 answers differ" in err, err[-2000:]
