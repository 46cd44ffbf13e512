"""The fuzz shrinker replays a case without timing: its kills become catch-ups, so a class
found with kills must be recognised in a replay that carries no ``+kill``."""

from __future__ import annotations

from tests.fuzz.check import Divergence
from tests.fuzz.classify import Context, tag
from tests.fuzz.shrink import same_class


def test_a_class_found_with_kills_is_the_same_class_in_a_replay() -> None:
    d = Divergence("missing", "t", "[1, \"a\"]")
    killed = Context(pk_style={"t": "composite"}, killed=True,
                     touched={"t": {"replace", "upsert", "insert"}})
    replayed = Context(pk_style={"t": "composite"}, touched={"t": {"replace", "upsert", "insert"}})
    found, again = tag(d, killed), tag(d, replayed)
    assert found == "missing:composite+replace+upsert+kill"
    assert same_class(found, {again})
    assert not same_class(found, {"missing:composite+replace"})
    assert not same_class("missing:composite+replace", {"missing:composite+replace+kill"})
