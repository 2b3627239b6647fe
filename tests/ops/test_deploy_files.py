"""deploy/: the Compose file and Dockerfile of the test environment, the Prometheus scrape
config and the Grafana dashboard, checked here without Docker (no engine on this machine):
`docker compose config` where Compose exists, else the YAML parsed and its structure checked.

Rule 1: the scrape config names each role's port as the systemd units and `setpay up` with
``metrics_base_port`` 9400 give it (``actors.supervisor.METRICS_OFFSET``).
Rule 2: the dashboard queries only metric names setpay/metrics.py defines (a live scrape
checks them too: tests/demo/test_metrics_live.py).
Rule 3: no secret in any of these files.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from actors.supervisor import DEFAULT_INSTANCE, METRICS_OFFSET, UP_ROLES
from setpay.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker" / "compose.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
BASE = 9400


def _compose_available() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    done = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    return done.returncode == 0


def test_compose_file() -> None:
    if _compose_available():
        done = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True,
            text=True, timeout=60, check=False,
            env={"PATH": "/usr/bin:/bin:/usr/local/bin", "SETPAY_BROKER_ADMIN_PASSWORD": "x"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert set(services) == {"rabbitmq", "setpay", "prometheus"}
    build = services["setpay"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT and (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert services["setpay"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert "management" in services["rabbitmq"]["image"]  # the API broker init provisions by
    env = services["setpay"]["environment"]
    assert env["SETPAY_METRICS_BASE_PORT"] == str(BASE)
    assert env["SETPAY_BROKER_MANAGEMENT_URL"].endswith(":15672")
    for port in services["setpay"].get("ports", []):
        assert port.startswith("127.0.0.1:"), port  # nothing published beyond the host
    # Prometheus shares the environment's network and reads the repository's scrape config.
    assert services["prometheus"]["network_mode"] == "service:setpay"
    mount = services["prometheus"]["volumes"][0].split(":")[0]
    assert (COMPOSE.parent / mount).resolve() == DEPLOY / "prometheus" / "prometheus.yml"
    # Rule 3: every password is the caller's, interpolated, never written here.
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            if re.search("PASS", key):
                assert str(value).startswith("${"), key
    assert set(doc["volumes"]) == {"rabbitmq-data", "setpay-data"}


def test_dockerfile_copies_every_package_and_exists_in_order() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
    assert lines[0].startswith("FROM python:3.11")
    copied = set()
    for line in lines:
        if line.startswith("COPY "):
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            for source in parts[:-1]:
                assert (ROOT / source).exists(), source
                copied.add(source.split("/")[0])
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= copied
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    entry = DEPLOY / "docker" / "entrypoint.sh"
    assert "setpay demo" in entry.read_text() and "setpay down" in entry.read_text()
    done = subprocess.run(["sh", "-n", str(entry)], capture_output=True, timeout=10, check=False)
    assert done.returncode == 0


def _unit_port(role: str) -> int:
    unit = (DEPLOY / "systemd" / f"setpay-{role}.service").read_text()
    return int(re.search(r"^Environment=SETPAY_METRICS_PORT=(\d+)$", unit, re.M).group(1))


def test_prometheus_scrapes_every_process_at_its_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "setpay")
    assert job["metrics_path"] == "/metrics"
    targets = {c["labels"]["role"]: (c["targets"], c["labels"]["identity"])
               for c in job["static_configs"]}  # fmt: skip
    assert set(targets) == set(UP_ROLES)
    for role in UP_ROLES:
        port = BASE + METRICS_OFFSET[role]
        assert targets[role] == ([f"127.0.0.1:{port}"], f"{role}.{DEFAULT_INSTANCE[role]}")
        assert _unit_port(role) == port, role  # Rule 1: the systemd unit serves it there


def dashboard_metrics() -> set[str]:
    """Every setpay metric name the Grafana dashboard's queries use (Rule 2)."""
    doc = json.loads((DEPLOY / "grafana" / "setpay.json").read_text())
    names = set()
    for panel in doc["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\bsetpay_[a-z_]+", target["expr"]))
    return names


def test_grafana_dashboard_queries_only_defined_metrics() -> None:
    names = dashboard_metrics()
    assert names, "the dashboard queries nothing"
    defined = set(METRIC_NAMES) | {f"{n}_{s}" for n in METRIC_NAMES
                                   for s in ("bucket", "sum", "count")}  # fmt: skip
    assert names <= defined, names - defined
    # the figures the issue asks for are on it
    for wanted in ("setpay_messages_total", "setpay_handler_seconds_bucket",
                   "setpay_keystore_calls_total", "setpay_publishes_total",
                   "setpay_dead_lettered_total", "setpay_redeliveries_total"):
        assert wanted in names, wanted


@pytest.mark.parametrize("path", ["prometheus/prometheus.yml", "grafana/setpay.json",
                                  "docker/compose.yml", "docker/Dockerfile"])
def test_no_secret_in_deploy_files(path: str) -> None:
    text = (DEPLOY / path).read_text()
    assert not re.search(r"(?i)(password|pass)\s*[:=]\s*['\"]?[A-Za-z0-9]", text.replace(
        "${SETPAY_BROKER_ADMIN_PASSWORD", ""))
