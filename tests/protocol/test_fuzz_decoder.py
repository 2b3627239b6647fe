"""Hypothesis fuzzing of the decoder: over 10,000 random and mutated inputs per run (bit
flips, truncations, insertions, type swaps in the msgpack tree, random msgpack trees and raw
bytes) through ``decode_message`` and every body and data-record decoder. The only exception
allowed out is ``ProtocolError``.

Runs are derandomized (same inputs every run, so CI is stable); set SETPAY_FUZZ_EXPLORE=1 to
draw fresh inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from protocol import codec, wrapper
from protocol import messages as m
from protocol.errors import ProtocolError
from tests.protocol.test_messages import BODY_SAMPLES, DATA_SAMPLES, NOW_MS, header_for

VALID = [wrapper.encode_message(header_for(body), body) for body in BODY_SAMPLES.values()]
BODIES = [(m.MESSAGE_CLASSES[t], codec.encode(body)) for t, body in BODY_SAMPLES.items()]
BODIES += [(m.DATA_RECORDS[ct], codec.encode(rec)) for ct, rec in DATA_SAMPLES.items()]
CLASSES = sorted({cls for cls, _ in BODIES}, key=lambda c: c.__name__)


def fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=not os.environ.get("SETPAY_FUZZ_EXPLORE"),
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def decode_any(data: bytes, cls: type | None = None) -> None:
    """Decode as a wrapped message, or as ``cls``; only ProtocolError may escape."""
    try:
        if cls is None:
            wrapper.decode_message(data, now_ms=NOW_MS)
        else:
            codec.decode(cls, data)
    except ProtocolError:
        pass


def run_counted(test: Callable[[], None], counter: list[int]) -> int:
    counter.clear()
    test()
    return len(counter)


# --- strategies -------------------------------------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.sampled_from([0, 1, 2, 99, 2**42, -1, b"\x00" * 32, ""])
)
trees = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=8)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 9), children, max_size=4)
    ),
    max_leaves=40,
)
# replacements inside a tree stay small: the point is a wrong type, not a big value
small_trees = st.recursive(leaves, lambda c: st.lists(c, max_size=3), max_leaves=4)


@st.composite
def byte_mutations(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid encoding with 1 to 4 edits: bit flips, byte sets, truncation, insertion, deletion."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 9))]
    return bytes(data)


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(tree, list):
        for i, item in enumerate(tree):
            out += _paths(item, (*prefix, i))
    elif isinstance(tree, dict):
        for key, item in tree.items():
            out += _paths(item, (*prefix, key))
    return out


@st.composite
def tree_mutations(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid encoding decoded to its msgpack tree, 1 to 3 nodes swapped for values of other
    types (or dropped, or duplicated), and packed again."""
    tree = msgpack.unpackb(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(tree)))
        replacement = draw(small_trees)
        if not path:
            tree = replacement
            continue
        parent = tree
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["swap", "swap", "drop", "dup"]))
        if op == "swap":
            parent[path[-1]] = replacement
        elif op == "drop":
            del parent[path[-1]]
        elif isinstance(parent, list):
            parent.insert(path[-1], parent[path[-1]])
    return msgpack.packb(tree, use_bin_type=True)


# --- the fuzz runs ----------------------------------------------------------------------

_count: list[int] = []


@fuzz_settings(4_000)
@given(byte_mutations(VALID))
def _fuzz_wrapped_bytes(data: bytes) -> None:
    _count.append(1)
    decode_any(data)


@fuzz_settings(2_500)
@given(tree_mutations(VALID))
def _fuzz_wrapped_trees(data: bytes) -> None:
    _count.append(1)
    decode_any(data)


@fuzz_settings(2_500)
@given(st.sampled_from(BODIES), st.data())
def _fuzz_bodies(body: tuple[type, bytes], data: st.DataObject) -> None:
    _count.append(1)
    cls, encoded = body
    mutate = data.draw(st.sampled_from([byte_mutations, tree_mutations]))
    decode_any(data.draw(mutate([encoded])), cls)


@fuzz_settings(1_000)
@given(trees, st.sampled_from(CLASSES))
def _fuzz_random_trees(tree: Any, cls: type) -> None:
    _count.append(1)
    encoded = msgpack.packb(tree, use_bin_type=True)
    decode_any(encoded)
    decode_any(encoded, cls)
    # the same tree as the body of an otherwise valid wrapper of every plausible type
    wrapped = msgpack.unpackb(VALID[len(encoded) % len(VALID)])
    wrapped[2] = encoded
    decode_any(msgpack.packb(wrapped, use_bin_type=True))


@fuzz_settings(1_000)
@given(st.binary(max_size=600), st.sampled_from(CLASSES))
def _fuzz_raw_bytes(data: bytes, cls: type) -> None:
    _count.append(1)
    decode_any(data)
    decode_any(data, cls)


def test_mutated_wrapped_messages_raise_only_protocol_error() -> None:
    """Byte-level edits of valid messages of every type: 4,000 inputs."""
    assert run_counted(_fuzz_wrapped_bytes, _count) >= 4_000


def test_type_swapped_trees_raise_only_protocol_error() -> None:
    """Type swaps, drops and duplicates in the msgpack tree of valid messages: 2,500."""
    assert run_counted(_fuzz_wrapped_trees, _count) >= 2_500


def test_body_and_record_decoders_raise_only_protocol_error() -> None:
    """Every body and data-record decoder on mutations of its own valid encoding: 2,500."""
    assert run_counted(_fuzz_bodies, _count) >= 2_500


def test_random_trees_raise_only_protocol_error() -> None:
    """Random msgpack trees as whole messages, as bodies, and inside a valid wrapper: 1,000."""
    assert run_counted(_fuzz_random_trees, _count) >= 1_000


def test_random_bytes_raise_only_protocol_error() -> None:
    """Raw random bytes as whole messages and as bodies: 1,000 (11,000 inputs in all)."""
    assert run_counted(_fuzz_raw_bytes, _count) >= 1_000


def test_mutations_do_reach_deep_checks() -> None:
    """The mutators are not trivially rejected: valid seeds still decode, and both kinds of
    mutation produce inputs that pass msgpack parsing and fail on a field check."""
    for data in VALID:
        decode_any(data)
        assert wrapper.decode_message(data, now_ms=NOW_MS).msg_type in m.MessageType
    tree = msgpack.unpackb(VALID[0])
    tree[0][2] = "yesterday"  # a type swap deep in the header
    try:
        wrapper.decode_message(msgpack.packb(tree), now_ms=NOW_MS)
    except ProtocolError as exc:
        assert "date" in exc.detail
    else:
        raise AssertionError("a string date was accepted")
