"""Text that is not UTF-8 survives the changelog image and the checkpoint's key, byte for byte."""

from __future__ import annotations

import sqlite3

from syncd.model import InvalidText
from syncd.stores.sqlite import values
from syncd.stream import decode_key, encode_key

ODD = [b"\xff", b"a\xffb", b"\xc3", b"\xc3\x22x", b"\xc3\\", b"\xed\xa0\x80", b"\xf0\x9f\x98",
       b"\x80\x81\xfe", b"\x01\xff\x1f", bytes(range(0x80, 0x100))]


def test_images_of_text_that_is_not_utf8_decode_to_its_bytes() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k, v)")
    for i, raw in enumerate(ODD):
        conn.execute("INSERT INTO t VALUES (CAST(? AS TEXT), CAST(? AS TEXT))", (raw + bytes([i]), raw))
    conn.execute("INSERT INTO t VALUES ('plain', 'é \\udc80 text')")
    rows = values.fetch_all(conn, "SELECT json_array(k), json_object('v', v, 'n', 1) FROM t ORDER BY rowid")
    for i, ((pk, image), raw) in enumerate(zip(rows, ODD, strict=False)):
        assert values.decode_key(pk) == (InvalidText(raw + bytes([i])),)
        assert values.decode_row(image) == {"v": InvalidText(raw), "n": 1}
    assert values.decode_row(rows[-1][1]) == {"v": "é \\udc80 text", "n": 1}  # valid text stays text


def test_a_key_that_is_not_utf8_round_trips_through_the_checkpoint() -> None:
    key = (InvalidText(b"b\xff"), b"\x00\x01", "t", 3, -0.0)
    back = decode_key(encode_key(key))
    assert back == key and str(back[4]) == "-0.0"


def test_a_key_that_is_not_utf8_compares_as_the_text_it_is() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    conn.executemany("INSERT INTO t VALUES (CAST(? AS TEXT))", [(b"a",), (b"b\xff",), (b"c",), (b"\xff",)])
    mark, value = values.param(InvalidText(b"b\xff"))
    got = values.fetch_all(conn, f"SELECT k FROM t WHERE k > {mark} ORDER BY k", [value])
    assert got == [("c",), (InvalidText(b"\xff"),)]
