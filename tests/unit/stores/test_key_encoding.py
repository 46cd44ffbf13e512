"""The snapshot's resume position (a key) goes through jsonb and back exactly."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from syncd.model import RowidCursor, SnapshotState, jsonb_holds
from syncd.stream import decode_key, encode_key

KEYS: list[tuple[Any, ...]] = [
    (1,), ("plain",), ("é ☃ 𝄞",), (b"\x00\xff",), (1.5, "a", b""),
    ("x\x00y",), ("\x00",), ("",),
    ("bad \udcff utf-8",),           # invalid UTF-8 read with surrogateescape
    ("\ud800 lone high",),           # any lone surrogate
    ("nul \x00 and \udc80",),
    (float("inf"),), (float("-inf"),), (-0.0,), (2**63 - 1, -(2**63)),
    (None,),
    (RowidCursor(rowid=2**62, since=17, schema_version=9, epoch=3), "uuid-key", b"\x00"),  # paged by rowid
]


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_a_key_round_trips_through_json(key: tuple[Any, ...]) -> None:
    text = json.dumps(encode_key(key), allow_nan=False)  # JSON that jsonb accepts:
    json.dumps(encode_key(key), ensure_ascii=False).encode("utf-8")  # valid UTF-8, and no NUL
    assert "\\u0000" not in text
    back = decode_key(json.loads(text))
    assert len(back) == len(key)
    for a, b in zip(back, key, strict=True):
        assert type(a) is type(b)
        if isinstance(a, float):
            assert repr(a) == repr(b) or (math.isnan(a) and math.isnan(b))
        else:
            assert a == b


def test_text_jsonb_cannot_hold_is_written_as_its_utf8_bytes() -> None:
    assert encode_key(("x\x00y",)) == [{"$text_hex": "780079"}]
    assert encode_key(("a\udcff",)) == [{"$text_hex": "61edb3bf"}]
    assert encode_key((b"x\x00y",)) == [{"$hex": "780079"}]
    assert encode_key(("x", 1)) == ["x", 1]  # what jsonb holds stays as it is
    assert decode_key([{"$text_hex": "780079"}, {"$hex": "780079"}]) == ("x\x00y", b"x\x00y")


def test_a_snapshot_state_keeps_such_a_key() -> None:
    state = SnapshotState.from_json(json.loads(json.dumps({"start": 0, "last_key": {}})))
    state.last_key["k"] = encode_key(("x\x00y", "\udcff"))
    again = SnapshotState.from_json(json.loads(json.dumps(state.to_json())))
    assert decode_key(again.last_key["k"]) == ("x\x00y", "\udcff")


def test_jsonb_holds() -> None:
    assert jsonb_holds("é") and jsonb_holds("")
    assert not jsonb_holds("\x00") and not jsonb_holds("\udcff")


def test_an_unknown_encoding_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="unknown key encoding"):
        decode_key([{"$what": "1"}])


def test_a_rowid_cursor_refuses_what_it_did_not_write() -> None:
    with pytest.raises(ValueError, match="not a rowid cursor"):
        decode_key([{"$rowid": [1, 2, 3]}])
    with pytest.raises(ValueError, match="not a rowid cursor"):
        decode_key([{"$rowid": [1, 2, 3, True]}])
