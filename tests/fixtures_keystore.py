"""pytest fixtures for the keystore: a private SoftHSM2 token and an open ``Hsm`` on it.

The token lives under pytest's temporary directory (never the system token dir) and
``SOFTHSM2_CONF`` points at it for the test session and every process it spawns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from keystore.hsm import Hsm, TokenConfig
from keystore.token import init_token, use_softhsm_conf
from setpay.config import Settings, load


@pytest.fixture(scope="session")
def keystore_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose data_dir holds a freshly initialised SoftHSM2 token."""
    data_dir = tmp_path_factory.mktemp("keystore-var")
    settings = load(env={}).replace(
        data_dir=data_dir, keystore_token_label="setpay-test", keystore_pin="4321-test"
    )
    before = os.environ.get("SOFTHSM2_CONF")
    init_token(settings)
    use_softhsm_conf(settings)
    yield settings
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before


@pytest.fixture(scope="session")
def token_config(keystore_settings: Settings) -> TokenConfig:
    return TokenConfig(
        keystore_settings.keystore_module,
        keystore_settings.keystore_token_label,
        keystore_settings.keystore_pin,
    )


@pytest.fixture(scope="session")
def hsm(token_config: TokenConfig) -> Iterator[Hsm]:
    """One logged-in session for direct (in-process, main-thread) tests."""
    h = Hsm(token_config)
    h.open()
    yield h
    h.close()
