"""Metrics and health of the live environment (setpay/metrics.py), on the demo package's one
environment (tests/demo/conftest.py: no environment of its own).

Rule 1: every process serves /healthz and /readyz (200) at the port its health file names.
Rule 2: after a load of N purchases through the thin clients, the POS counted N more PReq and
the gateway N more AuthReq, each timed N more times, with keystore calls and publish confirms
to go with them; after the demo's rows, at least as many as its purchases.
Rule 3: every metric the Grafana dashboard queries exists in a scrape (deploy/grafana).
Rule 4: `setpay status` shows each process's figures from its endpoint.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.supervisor import UP_ROLES, child_of
from tests.ops.environments import Env
from tests.ops.test_deploy_files import dashboard_metrics

pytestmark = pytest.mark.integration

N = 6
# The demo's purchases (tests/demo/test_demo_live.py rows): credit approved, insufficient
# funds, expired card, stolen card, sale, OPE right and wrong PIN.
DEMO_PURCHASES = 7


def port_of(data_dir: Path, identity: str) -> int:
    health = json.loads((data_dir / "run" / f"{identity}.health").read_text())
    assert isinstance(health["metrics_port"], int) and health["metrics_port"] > 0, health
    return health["metrics_port"]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def total(samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over every series whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def ports_of(data_dir: Path) -> dict[str, int]:
    return {child_of(r).identity: port_of(data_dir, child_of(r).identity) for r in UP_ROLES}


def test_every_process_is_live_and_ready(demo_run) -> None:
    data_dir, _ = demo_run
    ports = ports_of(data_dir)
    assert len(set(ports.values())) == len(ports)  # one endpoint per process
    for identity, port in ports.items():  # Rule 1
        status, body = get(port, "/healthz")
        assert status == 200 and json.loads(body)["alive"] is True, identity
        status, body = get(port, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True, identity
        assert get(port, "/")[0] == 404  # nothing else is served


def test_the_demo_rows_are_counted(demo_run) -> None:
    data_dir, out = demo_run
    assert "rows as expected" in out
    ports = ports_of(data_dir)
    merchant, gateway = scrape(ports["merchant.pos1"]), scrape(ports["gateway.pg1"])
    assert total(merchant, "setpay_messages_total", type="PREQ") >= DEMO_PURCHASES
    assert total(merchant, "setpay_messages_total", type="INQ_REQ") >= 1
    assert total(gateway, "setpay_messages_total", type="AUTH_REQ") >= DEMO_PURCHASES
    ca = scrape(ports["ca.main"])
    assert total(ca, "setpay_messages_total", type="CERT_REQ", outcome="ok") >= 4  # 4 cards


@pytest.fixture(scope="module")
def loaded(demo_run, demo_env):
    """Scrapes of the POS and the gateway before and after `setpay demo --purchases N`."""
    data_dir, _ = demo_run
    ports = ports_of(data_dir)
    merchant, gateway = ports["merchant.pos1"], ports["gateway.pg1"]
    before = scrape(merchant), scrape(gateway)
    others = {i: scrape(p) for i, p in ports.items()}
    done = Env.of(demo_env).setpay("demo", "--purchases", str(N), "--concurrency", "2",
                                   timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    after = scrape(merchant), scrape(gateway)
    LOADED.update(before=others, after={i: scrape(p) for i, p in ports.items()})
    return ports, before, after, done.stdout


LOADED: dict[str, dict[str, dict]] = {}  # every process's scrape around the load


def test_a_load_of_purchases_is_counted_where_it_happened(loaded) -> None:
    _ports, (m0, g0), (m1, g1), out = loaded  # Rule 2

    def delta(after, before, name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert "outcome     " in out
    assert delta(m1, m0, "setpay_messages_total", type="PREQ") == N
    assert delta(m1, m0, "setpay_messages_total", type="PREQ", outcome="ok") == N
    assert delta(m1, m0, "setpay_handler_seconds_count", type="PREQ") == N
    assert delta(g1, g0, "setpay_messages_total", type="AUTH_REQ", outcome="ok") == N
    assert delta(g1, g0, "setpay_handler_seconds_count", type="AUTH_REQ") == N
    # each PReq is answered (a confirmed publish) after an AuthReq was sent (another one)
    assert delta(m1, m0, "setpay_publishes_total", outcome="confirmed") >= 2 * N
    assert delta(g1, g0, "setpay_publishes_total", outcome="confirmed") >= N
    # both sign their answers and open what they receive through the keystore
    assert delta(m1, m0, "setpay_keystore_calls_total", outcome="ok") >= N
    assert delta(g1, g0, "setpay_keystore_calls_total", outcome="ok") >= N
    assert delta(m1, m0, "setpay_keystore_seconds_count") == delta(
        m1, m0, "setpay_keystore_calls_total")
    # the gateway asked the issuer host once per purchase over ISO 8583, every one answered
    answered = delta(g1, g0, "setpay_iso_requests_total", outcome="answered")
    assert answered >= N and delta(g1, g0, "setpay_iso_seconds_count") == answered
    assert total(g1, "setpay_iso_requests_total", outcome="timeout") == 0
    assert total(g1, "setpay_iso_saf_backlog") == 0
    for samples in (m1, g1):
        assert total(samples, "setpay_messages_total", outcome="failed") == 0
        assert total(samples, "setpay_dead_lettered_total") == 0
        assert total(samples, "setpay_ready") == 1


def test_the_keystore_counts_what_its_callers_asked_for(loaded) -> None:
    """The keystore process shows its workers' operations (keystore/process.py Rule 4): at
    least one per call its callers counted (a batch is one call and many operations)."""
    before, after = LOADED["before"], LOADED["after"]

    def delta(identity: str, name: str, **labels: str) -> float:
        return total(after[identity], name, **labels) - total(before[identity], name, **labels)

    calls = sum(delta(i, "setpay_keystore_calls_total") for i in after if i != "keystore.main")
    operations = delta("keystore.main", "setpay_keystore_operations_total")
    assert calls >= N and operations >= calls, (calls, operations)
    assert delta("keystore.main", "setpay_keystore_operations_total", op="sign",
                 outcome="ok") >= 3 * N  # merchant PInitRes, PRes; gateway AuthRes (at least)
    assert delta("keystore.main", "setpay_keystore_operation_seconds_count") == operations
    assert total(after["keystore.main"], "setpay_keystore_operations_total",
                 outcome="internal") == 0


def declared_names(port: int) -> set[str]:
    """Every series name a scrape of ``port`` declares (histograms with their suffixes)."""
    _status, text = get(port, "/metrics")
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_every_metric_the_dashboard_queries_is_in_a_scrape(loaded) -> None:
    ports, *_ = loaded  # Rule 3
    for identity in ("merchant.pos1", "gateway.pg1"):
        missing = dashboard_metrics() - declared_names(ports[identity])
        assert not missing, (identity, missing)


def test_status_shows_each_processes_figures(loaded, demo_env) -> None:
    ports, *_ = loaded  # Rule 4
    done = Env.of(demo_env).setpay("status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {p["identity"]: p for p in json.loads(done.stdout)["processes"]}
    for identity, port in ports.items():
        assert rows[identity]["metrics_port"] == port
        assert rows[identity]["figures"]["ready"] is True, rows[identity]
    assert rows["merchant.pos1"]["figures"]["messages"] >= N + DEMO_PURCHASES
    assert rows["gateway.pg1"]["figures"]["keystore_calls"] >= N
    # the keystore's column counts what it performed on the token, its workers' summed
    # (more than the running parties asked for: the set-up's commands call it too)
    assert rows["keystore.main"]["figures"]["keystore_operations"] >= N
    assert not rows["keystore.main"]["figures"]["keystore_calls"]
    text = Env.of(demo_env).setpay("status").stdout
    row = next(line for line in text.splitlines() if line.startswith("merchant.pos1"))
    assert str(ports["merchant.pos1"]) in row and " yes " in row
