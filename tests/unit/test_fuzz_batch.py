"""A case of a fuzz batch draws exactly what it draws alone: the table prefix changes names,
never the random schema, values, operations or kills (so a seed found in a batch is the same
case as ``python -m bench.fuzz --cases 1 --seed S``, and a batch is as strong as its cases)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.case import Options, Runner
from tests.fuzz.model import Step, Stmt


class _NoDaemon:
    running = False


class _Dry(Runner):
    """A case without syncd: events and barriers only recorded."""

    def event(self, name: str) -> None:
        self.result.steps.append(Step(name))

    def barrier(self, name: str) -> Iterator[str]:
        self.result.steps.append(Step(name))
        yield name


def _drawn(seed: int, prefix: str, tmp: Path) -> list[tuple[str, tuple[Stmt, ...]]]:
    r = _Dry(seed, "postgresql:///unused", tmp, Options(prefix=prefix))
    r.syncd = _NoDaemon()  # type: ignore[assignment]
    r.setup()
    for _ in r.steps():
        pass
    r.conn.close()
    plain = [(s.label, s.statements) for s in r.result.steps]
    return [(label.replace(prefix, ""), tuple((sql.replace(prefix, ""), p) for sql, p in stmts))
            for label, stmts in plain] if prefix else plain


@pytest.mark.parametrize("seed", [20261204, 20261205, 3000017])
def test_a_prefixed_case_draws_what_it_draws_alone(seed: int, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.fuzz.case.time.sleep", lambda s: None)
    alone = _drawn(seed, "", tmp_path / "alone")
    batched = _drawn(seed, "b007_", tmp_path / "batched")
    assert any(label.startswith("insert ") for label, _ in alone)
    assert batched == alone


def test_a_decimal_bound_beyond_64_bits_is_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 3000243 drew -(10**38) for a NUMERIC(38, 0): an int SQLite cannot bind
    (OverflowError, a harness fault that stopped its whole batch); it is written as text now.
    (Its steps are not compared with a prefixed run: once a rowid reaches 2**63 - 1, SQLite
    picks the next one at random, alone or not.)"""
    monkeypatch.setattr("tests.fuzz.case.time.sleep", lambda s: None)
    assert _drawn(3000243, "b001_", tmp_path)
