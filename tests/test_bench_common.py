"""The benchmarks' shared rule for comparing variants: alternated rounds, the best of each kept."""

from __future__ import annotations

from bench.common import alternated_best


def test_alternated_best_runs_the_variants_in_turn_and_keeps_each_ones_best():
    """bench train's rows (weight-std, image sides, allocators) and bench loader's (augmented vs
    bare) rest on it: A, B, A, B — never A, A, B, B, which would give the host's drift to one side."""
    order: list[str] = []
    results = {"a": iter([3.0, 5.0, 4.0]), "b": iter([7.0, 6.0, 2.0])}

    def measure(name: str):
        def run() -> float:
            order.append(name)
            return next(results[name])
        return run

    assert alternated_best([measure("a"), measure("b")], rounds=3) == [5.0, 7.0]
    assert order == ["a", "b"] * 3
    # `key` picks what "best" means for rows that carry more than the rate (bench train's allocator rows)
    rows = iter([(1.0, "slow"), (9.0, "fast")])
    assert alternated_best([lambda: next(rows)], rounds=2, key=lambda row: row[0]) == [(9.0, "fast")]
