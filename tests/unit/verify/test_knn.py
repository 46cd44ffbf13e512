from __future__ import annotations

from syncd.verify.knn import recall, tied_recall


def test_tied_recall_counts_rows_as_far_as_the_kth_as_found() -> None:
    exact = [("a", 0.0), ("b", 0.0), ("c", 0.5)]
    assert tied_recall([("b", 0.0), ("x", 0.0), ("c", 0.5)], exact, 3) == 1.0  # x ties with a
    assert recall(["b", "x", "c"], ["a", "b", "c"], 3) == 2 / 3
    assert tied_recall([("a", 0.0), ("y", 0.7), ("z", 0.9)], exact, 3) == 1 / 3
    assert tied_recall([("a", 0.0)], [("a", 0.0)], 10) == 1.0  # fewer rows than k
    assert tied_recall([], [], 10) == 1.0
