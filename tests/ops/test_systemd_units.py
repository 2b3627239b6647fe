"""deploy/systemd: one unit per role, each its own OS user that reads only its own secrets.

Rule 1: every role `setpay up` runs has ``setpay-<role>.service``, running ``setpay run
<role> --id <instance>`` (the supervisor's instance) as ``User=setpay-<role>``, a user no
other unit shares, writing only its own state directory, with its broker login loaded as its
own systemd credential (``SETPAY_AMQP_URL_FILE``) and the hardening options set.
Rule 2: ``systemd-analyze verify`` accepts every unit without a warning (ExecStart pointed at
this checkout's interpreter); deploy/setup.sh installs systemd-analyze, so this never skips.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from actors.supervisor import DEFAULT_INSTANCE, UP_ROLES

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
INSTALLED = "/opt/setpay/.venv/bin/setpay"
HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
    "ProtectHome": "yes", "UMask": "0077", "StateDirectoryMode": "0700",
    "CapabilityBoundingSet": "",
}  # fmt: skip


def _directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("role", UP_ROLES)
def test_each_role_runs_as_its_own_user_with_its_own_login(role: str) -> None:
    unit = _directives(UNITS / f"setpay-{role}.service")
    identity = f"{role}.{DEFAULT_INSTANCE[role]}"
    assert unit["User"] == [f"setpay-{role}"] and unit["Group"] == [f"setpay-{role}"]
    assert unit["ExecStart"] == [f"{INSTALLED} run {role} --id {DEFAULT_INSTANCE[role]}"]
    state = f"/var/lib/setpay/{role}"
    assert unit["StateDirectory"] == [f"setpay/{role}"] and unit["ReadWritePaths"] == [state]
    assert f"SETPAY_DATA_DIR={state}" in unit["Environment"]
    assert unit["LoadCredential"] == [f"amqp-url:/etc/setpay/credentials/{identity}.url"]
    assert "SETPAY_AMQP_URL_FILE=%d/amqp-url" in unit["Environment"]
    # No secret is written into a unit (units are world-readable).
    assert not [e for e in unit["Environment"]
                if e.startswith(("SETPAY_AMQP_URL=", "SETPAY_KEYSTORE_PIN",
                                 "SETPAY_BROKER_ADMIN_PASSWORD"))]  # fmt: skip
    for key, value in HARDENING.items():
        assert unit.get(key) == [value], f"{role}: {key}"


def test_no_two_units_share_a_user() -> None:
    users = [_directives(p)["User"][0] for p in sorted(UNITS.glob("setpay-*.service"))]
    assert len(users) == len(set(users)) == len(UP_ROLES)


def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: deploy/setup.sh installs the systemd package"
    setpay = Path(sys.executable).parent / "setpay"
    assert setpay.is_file(), f"{setpay}: the project is not installed in this interpreter"
    copies = []
    for unit in sorted(UNITS.glob("setpay-*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED, str(setpay)))
        copies.append(str(copy))
    done = subprocess.run(
        [analyze, "verify", "--man=no", *copies],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if "setpay-" in line]  # fmt: skip
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr
