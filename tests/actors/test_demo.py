"""`setpay demo` (protocol self-check): every check holds and the command says so."""

import pytest

from actors.demo import run_selfcheck
from cli import main as cli
from protocol.keys import SUITES


@pytest.mark.parametrize("suite", ["rsa2048", "p256"])
async def test_selfcheck_every_check_holds(suite: str) -> None:
    """Merchant blind to the PAN, gateway blind to the order, tampering and swaps refused."""
    checks = await run_selfcheck(SUITES[suite])
    assert len(checks) == 7
    failed = [c.step for c in checks if not c.ok]
    assert failed == []
    codes = {c.step: c.detail for c in checks}
    assert codes["a PI from another purchase is refused"] == "linkage_failure"
    assert codes["an OI from another purchase is refused"] == "signature_failure"


def test_demo_command_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's main command exits 0 and prints one row per check."""
    assert cli.main(["demo", "--selfcheck", "--suites", "p256"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out
    assert out.count(" ok ") == 7
