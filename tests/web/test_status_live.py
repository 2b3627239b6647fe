"""`setpay status` against the live test environment of the web tests, and with nothing up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.supervisor import UP_ROLES, child_of
from tests.ops.environments import Env, new_env

pytestmark = pytest.mark.integration


def test_status_with_nothing_running_says_so_in_one_line(tmp_path: Path) -> None:
    env = new_env(tmp_path / "var", "status")
    done = env.setpay("status")
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.strip().count("\n") == 0 and "nothing runs under" in done.stdout
    assert done.stderr == ""
    data = json.loads(env.setpay("status", "--json").stdout)
    assert data["code"] == 3 and data["supervisor_pid"] is None and data["processes"] == []


def test_status_lists_every_process_ready_and_both_front_doors_answering(web_env: Env) -> None:
    done = web_env.setpay("status")
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    for role in UP_ROLES:
        row = next(line for line in text.splitlines() if line.startswith(child_of(role).identity))
        assert " ready " in row, row
    assert text.count("answers (OpenAPI") == 2, text
    assert "{" not in text  # human output: no JSON log line in it
    data = json.loads(web_env.setpay("status", "--json").stdout)
    assert data["code"] == 0
    assert {p["identity"] for p in data["processes"]} == {child_of(r).identity for r in UP_ROLES}
    assert all(p["state"] == "ready" and p["pid"] for p in data["processes"])
    assert {d["service"] for d in data["front_doors"] if d["answers"]} == {"wallet", "pos"}
    # It reads; it holds no secret: no broker password of the environment in what it prints.
    stored = json.loads((web_env.data_dir / "broker" / "credentials.json").read_text())
    assert not any(password in text for password in stored.values())
