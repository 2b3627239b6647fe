"""A purchase end to end under every suite SoftHSM2 can do, with every party its own process
and every private key in the token: `setpay demo` in a fresh environment with
``SETPAY_SUITE`` = ``rsa3072`` and ``p256`` (``rsa2048`` is the default every other live test
runs). Every row comes out as expected, and the certificates the parties hold carry keys of
that suite: the key ring creates nothing else.

``rsa2048-oaep256`` needs OAEP-SHA256, which SoftHSM2 2.6 refuses: its purchase path runs with
software keys (tests/protocol/test_purchase_suites.py) and the keystore's refusal is shown in
tests/keystore/test_mechanisms.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from actors.gateway.identity import GatewayIdentity, identity_path
from tests.ops.environments import new_env, remove_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("suite", ["rsa3072", "p256"])
def test_the_demo_runs_under_the_suite(suite: str, tmp_path: Path) -> None:
    env = new_env(tmp_path / "var", suite.replace("-", ""), SETPAY_SUITE=suite)
    try:
        done = env.setpay("demo", timeout=900)
        out = done.stdout + done.stderr
        match = re.search(r"(\d+) of (\d+) rows as expected", out)
        assert match and match.group(1) == match.group(2), out[-3000:]
        # The gateway's certificates hold keys of the suite (its key ring made them).
        identity = GatewayIdentity.load(identity_path(env.data_dir, "pg1"))
        for cert in (identity.sig_cert, identity.kx_cert, identity.chain[0]):
            key = cert.public_key()
            if suite == "p256":
                assert isinstance(key, ec.EllipticCurvePublicKey)
            else:
                assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072
    finally:
        remove_env(env)

