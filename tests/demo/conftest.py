"""One live environment for the demo tests: `setpay demo` in a throw-away vhost, user prefix
and data dir, left running for the tests that act on it, brought down once the package is done.

Rule 1: broker users are broker-wide, so the run's users carry a unique prefix
(``SETPAY_BROKER_USER_PREFIX``); they are deleted, with the vhost, afterwards.
Rule 2: package scope, so every module of tests/demo shares the one (slow) run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.environments import Env, new_env, remove_env


@pytest.fixture(scope="package")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment variables of the package's throw-away environment (data dir, vhost,
    user prefix, issuer port); its processes, users and vhost are removed at the end."""
    env = new_env(tmp_path_factory.mktemp("demo-var"), "demo")
    try:
        yield env.vars
    finally:
        remove_env(env)


@pytest.fixture(scope="package")
def demo_run(demo_env: dict[str, str]) -> tuple[Path, str]:
    """(data dir, demo output) of `setpay demo`; the environment stays up until teardown."""
    env = Env.of(demo_env)
    proc = env.setpay("demo", timeout=600)
    return Path(os.fspath(env.data_dir)), proc.stdout + "\n--stderr--\n" + proc.stderr
