"""`ca init` over the real keystore: the hierarchy, idempotence, PEM export, openssl verify."""

from __future__ import annotations

import subprocess
from pathlib import Path

from actors.ca.brands import TEST_BRANDS
from actors.ca.hierarchy import export_pem, init_hierarchy
from actors.ca.store import CAStore
from protocol import ids
from protocol.certs import CertType, KeyUse, set_extension
from tests.fixtures_ca import CAEnv


def test_hierarchy_has_every_ca(ca_env: CAEnv) -> None:
    names = {row.name for row in ca_env.store.cas()}
    expected = {"root"}
    for brand in ("alpha", "beta"):
        expected.add(f"{brand}.brand")
        for role in ("cca", "mca", "pca"):
            expected |= {f"{brand}.{role}", f"{brand}.{role}.kx"}
    assert names == expected
    assert set(ca_env.created) == expected  # the session made them all
    root = set_extension(ca_env.root)
    assert root.cert_type is CertType.ROOT and root.hashed_root is not None
    kx = set_extension(ca_env.hierarchy.cert("beta.pca.kx"))
    assert (kx.cert_type, kx.key_use, kx.brand) == (CertType.PCA, KeyUse.KEY_EXCHANGE, "beta")
    # Every CA key is a token key of the CA identity.
    for row in ca_env.store.cas():
        assert row.key_label.endswith(f"ca.main/{row.name}")


async def test_init_is_idempotent(ca_env: CAEnv) -> None:
    before = [(r.name, r.serial) for r in ca_env.store.cas()]
    bcis = {b.name: ca_env.store.latest_bci(b.name) for b in TEST_BRANDS}
    created = await init_hierarchy(ca_env.hierarchy, TEST_BRANDS, ids.SystemClock().now_ms())
    assert created == []
    assert [(r.name, r.serial) for r in ca_env.store.cas()] == before
    assert {b.name: ca_env.store.latest_bci(b.name) for b in TEST_BRANDS} == bcis


def test_serials_survive_reopen(ca_env: CAEnv, tmp_path: Path) -> None:
    store = CAStore.open(tmp_path)
    first = [store.next_serial() for _ in range(3)]
    store.close()
    store = CAStore.open(tmp_path)
    after = store.next_serial()
    store.close()
    assert first == sorted(set(first)) and after > max(first)
    used = [row.serial for row in ca_env.store.certs()]
    assert len(used) == len(set(used))
    assert ca_env.store.next_serial() > max(used)


def test_exported_chains_verify_with_openssl(ca_env: CAEnv, tmp_path: Path) -> None:
    for name, data in export_pem(ca_env.hierarchy).items():
        (tmp_path / name).write_bytes(data)
    for brand in ("alpha", "beta"):
        for role in ("cca", "mca", "pca", "cca.kx", "pca.kx"):
            out = subprocess.run(
                [
                    "openssl", "verify", "-x509_strict", "-CAfile", str(tmp_path / "root.pem"),
                    "-untrusted", str(tmp_path / f"{brand}.brand.pem"),
                    str(tmp_path / f"{brand}.{role}.pem"),
                ],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert out.returncode == 0, out.stdout + out.stderr
    # A CA of one brand does not verify through the other brand's Brand CA.
    out = subprocess.run(
        [
            "openssl", "verify", "-CAfile", str(tmp_path / "root.pem"),
            "-untrusted", str(tmp_path / "beta.brand.pem"), str(tmp_path / "alpha.cca.pem"),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode != 0
