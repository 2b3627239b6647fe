"""`setpay ca …` commands against the session's CA (real broker, keystore and database)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from actors.ca import cli
from tests.fixtures_ca import CA_IDENTITY, CAEnv


def run(ca_env: CAEnv, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="setpay")
    cli.register(parser.add_subparsers(dest="command"))
    signing = ("init", "revoke", "issue", "crl")
    extra: list[str] = []
    if argv[0] in signing:
        extra = ["--url", ca_env.deployment.url_for(CA_IDENTITY),
                 "--keystore-queue", ca_env.deployment.queue]  # fmt: skip
    args = parser.parse_args(["ca", *argv, *extra])
    return int(args.func(args, ca_env.settings))


def openssl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *argv], capture_output=True, text=True, check=False)


def test_init_export_issue_revoke_crl(
    ca_env: CAEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(ca_env, "init") == 0
    assert "hierarchy exists" in capsys.readouterr().out
    out = tmp_path / "pem"
    assert run(ca_env, "export", str(out)) == 0
    assert (out / "root.pem").exists() and (out / "chain-beta.pem").exists()
    assert "PEM files" in capsys.readouterr().out
    # Issue a gateway key-exchange certificate out of band for a public key.
    public = rsa.generate_private_key(65537, 2048).public_key()
    (tmp_path / "pub.pem").write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cert = tmp_path / "gw.pem"
    assert run(ca_env, "issue", "--brand", "beta", "--type", "gateway", "--use", "kx",
               "--pubkey", str(tmp_path / "pub.pem"), "--out", str(cert), "--name", "P-9",
               "--pin-debit") == 0  # fmt: skip
    serial = int(capsys.readouterr().out.split()[2])
    verified = openssl("verify", "-CAfile", str(out / "root.pem"), "-untrusted",
                       str(out / "chain-beta.pem"), str(cert))  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    # The same key again is refused with a one-line reason.
    from setpay.cli import CommandError

    with pytest.raises(CommandError, match="already certified"):
        run(ca_env, "issue", "--brand", "beta", "--type", "gateway", "--use", "kx",
            "--pubkey", str(tmp_path / "pub.pem"), "--out", str(cert), "--name", "P-9")  # fmt: skip
    assert run(ca_env, "list", "--brand", "beta", "--type", "gateway") == 0
    listed = capsys.readouterr().out
    assert f"{serial:>8}  gateway" in listed and "valid" in listed
    assert run(ca_env, "revoke", str(serial), "--reason", "keyCompromise") == 0
    assert run(ca_env, "list", "--brand", "beta", "--type", "gateway") == 0
    assert "revoked (keyCompromise)" in capsys.readouterr().out
    with pytest.raises(CommandError, match="no certificate"):
        run(ca_env, "revoke", "99999999")
    # The new PCA CRL lists the serial and verifies under the PCA certificate (openssl).
    crls = tmp_path / "crl"
    assert run(ca_env, "crl", "--out", str(crls)) == 0
    shown = capsys.readouterr().out
    assert "BCI alpha" in shown and "BCI beta" in shown
    text = openssl("crl", "-inform", "DER", "-in", str(crls / "beta.pca.crl"), "-noout",
                   "-text", "-CAfile", str(out / "beta.pca.pem"))  # fmt: skip
    assert text.returncode == 0 and "verify OK" in text.stderr + text.stdout
    assert f"{serial:X}" in text.stdout.replace(":", "").upper()
    # --refresh publishes a new BCI sequence.
    before = ca_env.store.latest_bci("beta")
    assert run(ca_env, "crl", "--refresh") == 0
    after = ca_env.store.latest_bci("beta")
    assert before is not None and after is not None and after[0] == before[0] + 1
