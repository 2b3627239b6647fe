"""The mask_secrets safety net, observed through structlog's capture_logs."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from setpay.logs import REDACTED, mask_secrets


def logged(**fields) -> dict:
    with capture_logs(processors=[mask_secrets]) as logs:
        structlog.get_logger().info("event", **fields)
    assert len(logs) == 1
    return logs[0]


def test_secret_named_fields_are_dropped() -> None:
    entry = logged(pin="1234", card_secret=b"\x01" * 32, password="hunter2",
                   private_key="k", pan_secret="s", amount=1200)
    for name in ("pin", "card_secret", "password", "private_key", "pan_secret"):
        assert entry[name] == REDACTED
    assert entry["amount"] == 1200


def test_pan_like_numbers_are_masked_in_strings_ints_and_nesting() -> None:
    entry = logged(detail="card 4111 1111 1111 1111 refused", number=4111111111111111,
                   nested={"items": ["4012-8888-8888-1881"], "pin_block": "abcd"})
    assert "1111 1111 1111" not in entry["detail"] and "[masked]" in entry["detail"]
    assert entry["number"] == "4111…11[masked]"
    assert entry["nested"]["items"][0] == "4012…81[masked]"
    assert entry["nested"]["pin_block"] == REDACTED


def test_short_numbers_and_raw_bytes() -> None:
    entry = logged(stan="123456", xid=b"\x00" * 32, count=12345678901)
    assert entry["stan"] == "123456"
    assert entry["count"] == 12345678901  # 11 digits: not PAN-like
    assert entry["xid"] == "<32 bytes>"


def test_bound_context_is_masked_too() -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars, mask_secrets]) as logs:
        with structlog.contextvars.bound_contextvars(actor="wallet.main", pan="4111111111111111"):
            structlog.get_logger().info("event")
    assert logs[0]["pan"] == REDACTED and logs[0]["actor"] == "wallet.main"
