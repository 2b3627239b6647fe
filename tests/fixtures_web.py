"""One live environment for the HTTPS front-door tests (tests/attacks/test_web_live.py and
tests/web/test_browser_live.py): `setpay demo` in a throw-away vhost, user prefix, data dir
and ports, left running for the session's web tests, removed at the end. Session scope, so
the slow start-up is paid once when both modules run together."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ops.environments import Env, new_env, remove_env


@pytest.fixture(scope="session")
def web_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    # Every test logs in from 127.0.0.1: the per-source limit would count them all together.
    env = new_env(tmp_path_factory.mktemp("web-var"), "web", SETPAY_WEB_SOURCE_FAILURES="10000")
    try:
        demo = env.setpay("demo", timeout=900)
        assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
        yield env
    finally:
        remove_env(env)
