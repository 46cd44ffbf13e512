"""jsonb's text by orjson (the fast path of :func:`syncd.verify.jsonb.jsonb_text`) is the text the
exact stdlib path gives, byte for byte, or is not used at all.

The exact path is checked against PostgreSQL itself in
``tests/integration/verify/test_verify_expect.py``; here random JSON, written in many layouts
(spaces or none, escapes, duplicate keys, separators inside strings, numbers of every form),
goes through both.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.verify.expect import expect
from syncd.verify.jsonb import CanonError, _jsonb_text_exact, _no_numbers_but_integers, jsonb_text, jsonb_utf8

KEYS = st.text(alphabet=st.sampled_from([*'ab,: "\\é€\n\t\x1f/', "\U0001F600"]), max_size=4)
NUMBERS = st.sampled_from(["0", "-0", "7", "-12", "1.5", "1.50", "-0.0", "1e3", "1E-2", "2.5e+10", "0.1",
                           "18446744073709551615", "18446744073709551616", "-9223372036854775808",
                           "-9223372036854775809", "123456789012345678901234567890", "100.000"])


def _scalar(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(NUMBERS)
    if kind == 1:
        return json.dumps(draw(KEYS), ensure_ascii=draw(st.booleans()))
    return draw(st.sampled_from(["true", "false", "null"]))


@st.composite
def json_texts(draw: st.DrawFn, depth: int = 0) -> str:
    """A JSON text in a random layout: maybe duplicate keys, odd spacing, escaped or raw strings."""
    kind = draw(st.integers(0, 2 if depth < 3 else 0))
    space = draw(st.sampled_from(["", " ", "\n  "]))
    if kind == 0:
        return _scalar(draw)
    if kind == 1:
        items = draw(st.lists(json_texts(depth + 1), max_size=4))
        return "[" + f",{space}".join(items) + "]"
    members = draw(st.lists(st.tuples(KEYS, json_texts(depth + 1)), max_size=5))
    if members and draw(st.booleans()):
        members.append((members[0][0], draw(json_texts(depth + 1))))  # a duplicate key
    body = f",{space}".join(f"{json.dumps(k, ensure_ascii=draw(st.booleans()))}:{space}{v}"
                            for k, v in members)
    return "{" + space + body + space + "}"


@settings(max_examples=1500, deadline=None)
@given(json_texts())
def test_the_fast_path_gives_the_exact_text_or_nothing(text: str) -> None:
    exact = _jsonb_text_exact(text)
    fast = _no_numbers_but_integers(text)
    if fast is not None:
        assert fast.decode("utf-8") == exact, text
    assert jsonb_text(text) == exact
    assert jsonb_utf8(text) == exact.encode("utf-8")


@pytest.mark.parametrize(("text", "want"), [
    ('{"source": "api", "tags": ["a", "b"], "page": 7, "lang": "en"}',
     '{"lang": "en", "page": 7, "tags": ["a", "b"], "source": "api"}'),
    ('{"a":1,"a":2}', '{"a": 2}'),
    ('{"k:1": "v,2", "k": 1}', '{"k": 1, "k:1": "v,2"}'),  # separators inside strings
    ("[18446744073709551615, -9223372036854775808, -0]", "[18446744073709551615, -9223372036854775808, 0]"),
    ('"\\u00e9\\n"', '"é\\n"'),
])
def test_integers_only_take_the_fast_path(text: str, want: str) -> None:
    fast = _no_numbers_but_integers(text)
    assert fast is not None and fast.decode("utf-8") == want == _jsonb_text_exact(text)


@pytest.mark.parametrize("text", ['{"x": 1.50}', "[1e3]", "[-0.0]", "18446744073709551616",
                                  "[123456789012345678901234567890]", '"\\ud800"', "[NaN]", "{bad"])
def test_numbers_with_their_own_digits_and_odd_texts_take_the_exact_path(text: str) -> None:
    assert _no_numbers_but_integers(text) is None


def test_one_character_and_number_layouts_change_the_part() -> None:
    e = expect("j", "jsonb")
    base = '{"source": "api", "tags": ["a", "b"], "page": 7}'
    assert e.part(base) != e.part(base.replace('"b"', '"c"'))
    assert e.part('{"x": 1.50}') != e.part('{"x": 1.5}')
    assert e.part('{"x": 1.5}') == e.part('{"x":1.5}')
    assert e.part('{"b": 1, "a": 2}') == e.part('{"a": 2, "b": 1}')


def test_invalid_json_is_still_rejected() -> None:
    for text in ["{bad", '{"a": NaN}', '"\\u0000', "[1,]"]:
        with pytest.raises(CanonError):
            jsonb_text(text)


def test_a_large_random_corpus_agrees() -> None:
    rng = random.Random(7)
    words = ["upload", "crawl", "api", "é", "a,b", "c:d", "\"q\"", "\\", "\n"]
    for _ in range(3000):
        values = [rng.randint(-10**20, 10**20), rng.choice(words), [rng.choice(words)] * rng.randint(0, 3),
                  {"n": rng.randint(0, 9)}, True, None]
        obj = {rng.choice(["source", "tags", "page", "lang", "k", "ü"]): rng.choice(values)
               for _ in range(rng.randint(0, 6))}
        text = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
        assert jsonb_text(text) == _jsonb_text_exact(text), text
