"""Log lines are written whole: processes sharing one file never interleave or lose lines."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

from setpay import logs

LINES = 1500


def _log_many(path: str, who: int, count: int) -> None:
    """A spawned process: configure logging at its entry point, log ``count`` long lines."""
    logs.configure("json", "info", path=path)
    log = logs.get_logger(component="test", who=who)
    for i in range(count):
        # ~1 KB of text per line, so a split write would show as broken JSON at once.
        log.info("line", seq=i, filler=f"{who}" * 1000)


def test_two_processes_share_one_file_line_by_line(tmp_path: Path) -> None:
    """Every line of a file two processes log into at once parses, and none is lost."""
    path = tmp_path / "shared.log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_log_many, args=(str(path), who, LINES)) for who in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    records = [json.loads(line) for line in path.read_bytes().decode().splitlines()]
    seen = {(r["who"], r["seq"]) for r in records}
    assert len(records) == 2 * LINES
    assert seen == {(who, i) for who in (1, 2) for i in range(LINES)}


def test_oversized_lines_stay_bounded_and_json(tmp_path: Path) -> None:
    """A huge value is cut before rendering; a line that is still too big becomes a summary."""
    path = tmp_path / "big.log"
    logs.configure("json", "info", path=path)
    try:
        log = logs.get_logger(component="test")
        log.info("long_value", detail="x" * 100_000 + "the end")
        log.info("many_fields", **{f"f{i}": "y" * 1000 for i in range(20)})
    finally:
        logs.configure("json", "info")  # back to stderr; closes the file
    raw = path.read_bytes().splitlines(keepends=True)
    assert all(len(line) <= logs.MAX_LINE and line.endswith(b"\n") for line in raw)
    first, second = (json.loads(line) for line in raw)
    assert first["event"] == "long_value" and first["detail"].endswith("the end")
    assert second["event"] == "log_line_cut" and second["bytes"] > logs.MAX_LINE
