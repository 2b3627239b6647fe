"""The trace commands on a recording of the live environment's purchases (tests/trace/conftest).

Rule 1: `setpay trace show` lists every message with its type and outcome; `check` finds no
violation in the real traffic and one per property in a copy edited to break it; `diff` of a
trace with itself is empty and names the XID of an edited transaction.
Rule 2: the attack replay against the environment that produced the trace: no request with an
effect is accepted again (each refused or answered with the stored bytes).
Rule 3: a truncated or corrupted file names the byte offset; the records before still show,
are checked, and are replayed.
Rule 4: the file holds no PAN of the demo's cards (raw bytes, text, UTF-16) and no keystore
traffic.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from actors.environment import DEBIT_NUMBER, LOAD_PANS
from actors.trace.check import Checker, Violation
from actors.trace.fileformat import TraceRecord, TraceWriter, read_trace
from actors.trace.show import messages
from actors.trace.wire import view
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import MessageType as M
from protocol.set_error import build_error
from protocol.wrapper import amqp_type
from tests.demo.test_demo_live import PANS
from tests.ops.environments import ROOT, SETPAY, Env
from tests.trace.conftest import Recording

pytestmark = pytest.mark.integration


def setpay(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SETPAY, "trace", *args], env=env.vars, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def records(path: Path) -> tuple[object, list[TraceRecord]]:
    header, items = read_trace(path)
    return header, [r for _, r in items]


def write(path: Path, header: object, recs: list[TraceRecord]) -> Path:
    writer = TraceWriter(path, header)  # type: ignore[arg-type]
    for r in recs:
        writer.append(r)
    writer.close()
    return path


def typed(recs: list[TraceRecord], t: M, xid: bytes) -> int:
    """Index of the first record of type ``t`` in transaction ``xid``."""
    for i, r in enumerate(recs):
        m = view(0, r)
        if m.msg_type is t and m.txn == xid:
            return i
    raise AssertionError(f"no {t.name} for {xid.hex()}")


def violations(path: Path) -> list[Violation]:
    return list(Checker().run(messages(path)[1]))


def test_show_lists_every_message_with_type_and_outcome(recording: Recording) -> None:
    assert recording.outcomes[0] == "AUTHORIZATION_PERFORMED/APPROVED"
    proc = setpay(recording.env, "show", str(recording.path))
    assert proc.returncode == 0, proc.stderr
    listing = proc.stdout.splitlines()
    _, recs = records(recording.path)
    assert len(listing) == len(recs) >= 18
    for xid in recording.xids:
        mine = [line for line in listing if xid[:8].hex() in line]
        kinds = {line.split()[4] for line in mine}
        assert {"PREQ", "AUTH_REQ", "AUTH_RES", "PRES"} <= kinds, mine
    js = [json.loads(x) for x in setpay(recording.env, "show", str(recording.path), "--json",
                                         "--type", "AuthRes").stdout.splitlines()]  # fmt: skip
    assert len(js) == 3 and {j["outcome"] for j in js} == {"ok"}
    assert {j["xid"] for j in js} == {x.hex() for x in recording.xids}
    only = setpay(
        recording.env,
        "show",
        str(recording.path),
        "--xid",
        recording.xids[0].hex()[:12],
        "--party",
        "gateway",
    ).stdout.splitlines()
    assert [line.split()[4] for line in only] == ["AUTH_REQ", "AUTH_RES"]


def test_check_passes_on_the_real_traffic(recording: Recording) -> None:
    proc = setpay(recording.env, "check", str(recording.path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 violations" in proc.stderr


def _error_for(request: TraceRecord, like: TraceRecord) -> TraceRecord:
    body = asyncio.run(build_error(ProtocolError(ErrorCode.STATE_VIOLATION, "x"),
                                   request.body, 1_700_000_000_000))  # fmt: skip
    return TraceRecord(like.t_ns, like.exchange, like.routing_key, amqp_type(M.ERROR),
                       like.correlation_id, like.reply_to, like.user_id, body)  # fmt: skip


def test_check_reports_each_broken_property_by_xid(recording: Recording, tmp_path: Path) -> None:
    header, recs = records(recording.path)
    credit, debit = recording.xids[0], recording.xids[1]
    cases: dict[str, list[TraceRecord]] = {}
    # order: the merchant sends an AuthReq for a purchase it never received
    cases["order"] = [r for i, r in enumerate(recs) if i != typed(recs, M.PREQ, debit)]
    # sender: the AuthRes published by the merchant's login
    edited = list(recs)
    i = typed(recs, M.AUTH_RES, debit)
    edited[i] = TraceRecord(
        **{**_fields(recs[i]), "user_id": recs[typed(recs, M.PRES, debit)].user_id}
    )
    cases["sender"] = edited
    # rrpid: the same PReq again, answered with other bytes
    edited = list(recs)
    preq, pres = recs[typed(recs, M.PREQ, debit)], recs[typed(recs, M.PRES, debit)]
    other = recs[typed(recs, M.PRES, credit)]
    edited += [
        TraceRecord(**{**_fields(preq), "correlation_id": "again"}),
        TraceRecord(**{**_fields(pres), "correlation_id": "again", "body": other.body}),
    ]
    cases["rrpid"] = edited
    # after-error: the credit purchase's PReq refused at once, then an inquiry about it
    edited = list(recs)
    i = typed(recs, M.PRES, credit)
    edited[i] = _error_for(recs[typed(recs, M.PREQ, credit)], recs[i])
    gone = {typed(recs, M.AUTH_REQ, credit), typed(recs, M.AUTH_RES, credit)}
    cases["after-error"] = [r for j, r in enumerate(edited) if j not in gone]
    # response: an AuthRes whose request is not in the trace
    edited = list(recs)
    i = typed(recs, M.AUTH_RES, debit)
    edited[i] = TraceRecord(**{**_fields(recs[i]), "correlation_id": "nobody-asked"})
    cases["response"] = edited
    for prop, recs_ in cases.items():
        path = write(tmp_path / f"{prop}.trace", header, recs_)
        found = violations(path)
        want = debit if prop != "after-error" else credit
        assert any(v.prop == prop and v.txn == want.hex() for v in found), (prop, found)
        proc = setpay(recording.env, "check", str(path))
        assert proc.returncode == 1 and want.hex() in proc.stdout, (prop, proc.stdout)


def _fields(r: TraceRecord) -> dict[str, object]:
    return {f: getattr(r, f) for f in TraceRecord.__dataclass_fields__}


def test_diff_is_empty_with_itself_and_names_an_edited_xid(
    recording: Recording, tmp_path: Path
) -> None:
    same = setpay(recording.env, "diff", str(recording.path), str(recording.path))
    assert same.returncode == 0 and same.stdout == ""
    header, recs = records(recording.path)
    wrong = recording.xids[2]
    i = typed(recs, M.PRES, wrong)
    recs[i] = _error_for(recs[typed(recs, M.PREQ, wrong)], recs[i])
    edited = write(tmp_path / "edited.trace", header, recs)
    proc = setpay(recording.env, "diff", str(recording.path), str(edited))
    assert proc.returncode == 1
    assert [line.split()[0] for line in proc.stdout.splitlines()] == [wrong.hex()] * 2
    assert "STATE_VIOLATION" in proc.stdout


def test_attack_replay_takes_no_effect(recording: Recording) -> None:
    proc = setpay(recording.env, "replay", str(recording.path), "--attack")
    lines = proc.stdout.splitlines()
    verdicts = {(line.split()[1], line.split()[4]) for line in lines}
    assert len(lines) == 10, proc.stdout  # 3 PInitReq, 3 PReq, 3 AuthReq, 1 InqReq
    # Every replayed request, the InqReq included (the merchant answers a repeated InqReq
    # RRPID from its reply store), is refused or answered with the stored bytes: zero accepted.
    assert all(line.split()[4] in ("refused", "stored") for line in lines), proc.stdout
    assert ("AUTH_REQ", "stored") in verdicts and ("PREQ", "stored") in verdicts
    assert ("INQ_REQ", "stored") in verdicts
    assert proc.returncode == 0, proc.stdout


def test_truncated_and_corrupted_files_name_the_offset(
    recording: Recording, tmp_path: Path
) -> None:
    raw = recording.path.read_bytes()
    offsets = [off for off, _ in read_trace(recording.path)[1]]
    cut = offsets[5] + 20  # inside the sixth record
    truncated = tmp_path / "truncated.trace"
    truncated.write_bytes(raw[:cut])
    corrupted = tmp_path / "corrupted.trace"
    corrupted.write_bytes(raw[: offsets[7] + 40] + bytes([raw[offsets[7] + 40] ^ 1])
                          + raw[offsets[7] + 41:])  # fmt: skip
    for path, offset, shown in ((truncated, offsets[5], 5), (corrupted, offsets[7], 7)):
        proc = setpay(recording.env, "show", str(path))
        assert proc.returncode == 1
        assert f"byte offset {offset}" in proc.stderr
        assert len(proc.stdout.splitlines()) == shown
        checked = setpay(recording.env, "check", str(path))
        assert checked.returncode == 1 and f"byte offset {offset}" in checked.stderr
        assert f"{shown} messages" in checked.stderr


def test_the_file_holds_no_pan_and_no_keystore_traffic(recording: Recording) -> None:
    raw = recording.path.read_bytes()
    for number in {*PANS, *LOAD_PANS, DEBIT_NUMBER}:
        forms = (number.encode(), number.encode("utf-16-le"), number[4:].encode())
        # a tail shorter than 8 digits turns up in any binary file of this size by chance
        for form in (f for f in forms if len(f) >= 8):
            assert form not in raw, number[-4:]
    header, recs = records(recording.path)
    for r in recs:
        m = view(0, r, header.user_prefix)  # type: ignore[attr-defined]
        assert m.msg_type is not None and not m.problem
        assert "keystore" not in (m.sender_role, m.receiver_role)
        assert not r.routing_key.startswith("keystore")


def test_a_truncated_trace_replays_the_records_before_the_cut(
    recording: Recording, tmp_path: Path
) -> None:
    """Cut where at least three requests and their answers lie before the cut (a request
    whose answer was cut off cannot be told from one accepted again: it counts as accepted)."""
    header, items = read_trace(recording.path)
    seen = [(off, view(off, rec, header.user_prefix)) for off, rec in items]

    def answered_before(i: int) -> int:
        asked = {m.correlation_id for _, m in seen[:i]
                 if m.msg_type is not None and m.msg_type.name.endswith("REQ")}  # fmt: skip
        answered = {m.correlation_id for _, m in seen[:i]
                    if m.msg_type is not None and not m.msg_type.name.endswith("REQ")}  # fmt: skip
        return len(asked) if asked <= answered else 0

    cut_at = next(i for i in range(1, len(seen)) if answered_before(i) >= 3)
    before = answered_before(cut_at)
    raw = recording.path.read_bytes()
    truncated = tmp_path / "cut.trace"
    truncated.write_bytes(raw[: seen[cut_at][0] + 20])
    proc = setpay(recording.env, "replay", str(truncated), "--attack")
    assert proc.returncode == 1
    assert f"byte offset {seen[cut_at][0]}" in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == before >= 3, proc.stdout
    assert all(line.split()[4] in ("refused", "stored") for line in lines), proc.stdout
