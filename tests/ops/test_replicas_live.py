"""Replicas per role (actors/supervisor.py Rule 6) in a throw-away test environment, through
the real commands: `setpay scale` runs several processes of merchant, gateway, keystore and
wallet; each is ready with its own pid, health file and metrics endpoint; a load over them
fails nowhere and the replicas share the work; SIGKILL of one replica of each of those roles
in the middle of a load loses no purchase and does none twice; a lowered count retires the
highest replicas and only those.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ops.environments import ROOT, SETPAY, Env, alive, new_env, remove_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCALED = ("keystore.main", "gateway.pg1", "merchant.pos1", "wallet.main")
KILLED = tuple(f"{identity}@1" for identity in SCALED)
COUNT = 400  # purchases in the load one replica of each role is killed in


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    environment = new_env(tmp_path_factory.mktemp("replicas-var"), "replicas")
    try:
        # the first bench run brings the environment up (one process per role)
        first = bench(environment, "--count", "4", "--concurrency", "2")
        assert first["purchases"]["failed"] == 0, first
        done = environment.setpay("scale", "merchant=2", "gateway=2", "keystore=2", "wallet=2",
                                  timeout=240)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        yield environment
    finally:
        remove_env(environment)


def bench(env: Env, *args: str) -> dict[str, Any]:
    done = env.setpay("bench", "auth", "--json", "--quiet", "--no-bounds", "--warmup", "0",
                      "--cardholders", "16", "--mix", "credit=0.9,decline=0.1", *args,
                      timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def health(env: Env, name: str) -> dict[str, Any]:
    return dict(json.loads((env.run_dir / f"{name}.health").read_text()))


def handled(env: Env, name: str) -> int:
    """SET messages the process handled, from its own metrics endpoint."""
    import asyncio

    from actors.status import scrape

    port = health(env, name)["metrics_port"]
    return int(asyncio.run(scrape(port, 5.0)).get("messages") or 0)


def test_every_replica_is_ready_with_its_own_pid_and_metrics_port(env: Env) -> None:
    pids = env.recorded_pids()
    names = [n for identity in SCALED for n in (identity, f"{identity}@1")]
    for name in names:
        assert name in pids and alive(pids[name]), (name, pids)
        assert health(env, name).get("ready") is True or health(env, name).get("state") == "ready"
    assert len({pids[n] for n in names}) == len(names)
    ports = [health(env, n).get("metrics_port") for n in names]
    assert all(isinstance(p, int) and p > 0 for p in ports) and len(set(ports)) == len(ports)
    states = json.loads((env.run_dir / "supervisor.health").read_text())["children"]
    assert all(states[n] == "ready" for n in names), states
    status = env.setpay("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    listed = {p["identity"] for p in json.loads(status.stdout)["processes"]}
    assert set(names) <= listed
    # each process's environment says which replica it is
    environ = (f"/proc/{pids['merchant.pos1@1']}/environ")
    with open(environ, "rb") as f:
        assert b"SETPAY_REPLICA=1" in f.read().split(b"\0")


def test_a_load_over_the_replicas_fails_nowhere_and_both_merchants_work(env: Env) -> None:
    before = {n: handled(env, n) for n in ("merchant.pos1", "merchant.pos1@1")}
    out = bench(env, "--count", "80", "--concurrency", "8")
    assert out["purchases"]["measured"] == 80
    assert out["purchases"]["failed"] == 0 and out["errors"] == {}, out["errors"]
    # competing consumers: both merchant processes handled part of the load
    after = {n: handled(env, n) for n in before}
    assert all(after[n] > before[n] for n in before), (before, after)


def merchant_messages(env: Env) -> int:
    return sum(handled(env, n) for n in ("merchant.pos1", "merchant.pos1@1"))


def test_sigkill_of_one_replica_of_each_role_loses_no_purchase(env: Env) -> None:
    before = merchant_messages(env)
    runner = subprocess.Popen(
        [*SETPAY, "bench", "auth", "--json", "--quiet", "--no-bounds", "--warmup", "0",
         "--cardholders", "16", "--mix", "credit=0.9,decline=0.1", "--count", str(COUNT),
         "--concurrency", "8"],
        env=env.vars, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # well into the measured purchases (two merchant messages each: PInitReq, PReq)
        wait_for(lambda: merchant_messages(env) >= before + COUNT // 4, 300,
                 "a quarter of the load done")  # fmt: skip
        assert runner.poll() is None, "the load ended before the kill"
        pids = env.recorded_pids()
        for name in KILLED:
            os.kill(pids[name], signal.SIGKILL)
        stdout, stderr = runner.communicate(timeout=600)
    finally:
        if runner.poll() is None:
            runner.kill()
    out = json.loads(stdout) if stdout.lstrip().startswith("{") else {}
    assert runner.returncode == 0, (out.get("purchases"), out.get("errors"), stderr[-3000:])
    assert out["purchases"]["measured"] == COUNT
    assert out["purchases"]["failed"] == 0 and out["errors"] == {}, out["errors"]
    # the supervisor restarts each killed replica
    wait_for(lambda: all(
        json.loads((env.run_dir / "supervisor.health").read_text())["children"].get(n) == "ready"
        for n in KILLED), 120, "the killed replicas to be back")  # fmt: skip
    assert all(env.recorded_pids()[n] != pids[n] for n in KILLED)
    books = ledgers_agree(env)
    assert books["purchases"] >= COUNT and books["double"] == 0, books


def ledgers_agree(env: Env, timeout: float = 90.0) -> dict[str, Any]:
    """`setpay ledgers --json` once no work is pending (exit 0); fails on a disagreement."""
    deadline = time.monotonic() + timeout
    while True:
        done = env.setpay("ledgers", "--json")
        assert done.returncode in (0, 2), done.stdout[-3000:] + done.stderr[-2000:]
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:]
    books = dict(json.loads(done.stdout))
    for key in ("double", "merchant_only", "issuer_only", "amount_mismatch"):
        assert books[key] == 0, books
    return books


def test_a_lowered_count_retires_the_highest_replica_only(env: Env) -> None:
    kept = env.recorded_pids()["merchant.pos1"]
    done = env.setpay("scale", "merchant=1", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "merchant.pos1@1" not in done.stdout
    pids = env.recorded_pids()
    assert "merchant.pos1@1" not in pids and pids["merchant.pos1"] == kept
    assert not (env.run_dir / "merchant.pos1@1.health").exists()
    assert "gateway.pg1@1" in pids  # other roles keep their counts
    out = bench(env, "--count", "10", "--concurrency", "4")
    assert out["purchases"]["failed"] == 0, out["errors"]


def test_bad_replica_counts_are_refused_with_a_clear_error(env: Env) -> None:
    for bad, says in (("merchant=0", "1..16"), ("nobody=2", "ROLE=N"), ("merchant", "ROLE=N")):
        done = env.setpay("scale", bad)
        assert done.returncode != 0
        assert says in done.stderr + done.stdout, done.stderr
        assert "Traceback" not in done.stderr


def test_bench_scale_measures_one_row_per_process_count(env: Env) -> None:
    before = json.loads((env.run_dir / "replicas").read_text())
    out = bench(env, "--scale", "1,2", "--duration", "4", "--concurrency", "4")
    assert out["mode"] == "scale" and out["scale_roles"] == ["merchant", "gateway"]
    rows = out["scale"]
    assert [r["processes"] for r in rows] == [1, 2]
    # every role's processes (six roles, two of them scaled, two more at two already)
    assert rows[1]["processes_running"] > rows[0]["processes_running"]
    assert all(r["failed"] == 0 and r["measured"] > 0 and r["throughput"] > 0 for r in rows)
    after = json.loads((env.run_dir / "replicas").read_text())
    assert {r: after.get(r, 1) for r in ("merchant", "gateway")} == \
        {r: before.get(r, 1) for r in ("merchant", "gateway")}  # fmt: skip
