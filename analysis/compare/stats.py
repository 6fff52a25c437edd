"""Statistics over seeds for a normalisation comparison: per-norm mean ± sd and paired differences.

Pure numbers in, plain dicts out (numpy and scipy only), so the arithmetic is testable without runs.
Each input row is one run: its norm, its seed and the numbers of `METRICS` (a fraction or seconds;
None or NaN when the run has none).

- `seed_summary`: per norm, over its runs: n, mean and sample standard deviation (ddof=1; None when
  n < 2) of final test accuracy, best-epoch test accuracy and wall time.
- `paired_differences`: per pair of norms (A, B) in the given order and per accuracy metric, the
  mean of A − B over the seeds both have, with a 95% two-sided t-interval
  (t.ppf(0.975, n − 1) · sd / √n; none when n < 2) and a verdict: "A > B" when the interval lies above
  0, "B > A" when below, otherwise `NO_DIFFERENCE` (also when n < 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

METRICS = ("final_test_acc", "best_test_acc", "wall_seconds")  # summarised per norm
PAIRED_METRICS = ("final_test_acc", "best_test_acc")  # compared between norms
METRIC_TITLES = {"final_test_acc": "final test acc", "best_test_acc": "best-epoch test acc",
                 "wall_seconds": "wall time"}
CONFIDENCE = 0.95
NO_DIFFERENCE = "no difference detected at this budget"
INTERVAL_NOTE = ("95% t-interval of the mean paired difference over the seeds both norms share "
                 "(mean ± t(0.975, n−1) · sd/√n); fewer than 2 shared seeds: no interval")


def finite_number(value: Any) -> float | None:
    """A finite float, or None (missing, NaN, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def mean_sd(values: Iterable[Any]) -> dict[str, Any]:
    """{"n", "mean", "sd", "min", "max"} of the finite values; sd uses ddof=1 and is None when n < 2;
    mean/min/max are None when n = 0."""
    xs = np.array([v for v in (finite_number(x) for x in values) if v is not None], dtype=np.float64)
    n = int(xs.size)
    return {"n": n, "mean": float(xs.mean()) if n else None, "sd": float(xs.std(ddof=1)) if n >= 2 else None,
            "min": float(xs.min()) if n else None, "max": float(xs.max()) if n else None}


def t_interval(diffs: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean of the differences with a two-sided t-interval: {"n", "mean", "sd", "t", "half_width",
    "low", "high"}; the interval fields (and sd when n < 2) are None when n < 2."""
    from scipy import stats

    summary = mean_sd(diffs)
    n, mean, sd = summary["n"], summary["mean"], summary["sd"]
    out: dict[str, Any] = {"n": n, "mean": mean, "sd": sd, "t": None, "half_width": None, "low": None, "high": None}
    if n >= 2 and mean is not None and sd is not None:
        t = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
        half = t * sd / math.sqrt(n)
        out.update(t=t, half_width=half, low=mean - half, high=mean + half)
    return out


def verdict(a: str, b: str, low: float | None, high: float | None) -> str:
    """"a > b" when the interval of a − b lies above 0, "b > a" when below, else NO_DIFFERENCE."""
    if low is not None and low > 0:
        return f"{a} > {b}"
    if high is not None and high < 0:
        return f"{b} > {a}"
    return NO_DIFFERENCE


def _by_norm(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["norm"]), []).append(row)
    return groups


def seed_summary(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per norm (in first-seen order): {"norm", "n", "seeds", <metric>: mean_sd(...) for METRICS}."""
    out = []
    for norm, runs in _by_norm(rows).items():
        entry: dict[str, Any] = {"norm": norm, "n": len(runs), "seeds": [r.get("seed") for r in runs]}
        for metric in METRICS:
            entry[metric] = mean_sd(r.get(metric) for r in runs)
        out.append(entry)
    return out


def _per_seed(runs: list[dict[str, Any]], metric: str) -> dict[Any, float]:
    """seed → value for runs with a seed and a finite value; the first run of a seed counts."""
    out: dict[Any, float] = {}
    for r in runs:
        value = finite_number(r.get(metric))
        if r.get("seed") is not None and value is not None:
            out.setdefault(r["seed"], value)
    return out


def paired_differences(rows: Iterable[dict[str, Any]], norms: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """For each pair (A, B) of norms (A before B in `norms`, default first-seen order) and each of
    PAIRED_METRICS: {"a", "b", "metric", "seeds", **t_interval(A − B per shared seed), "verdict"}."""
    groups = _by_norm(rows)
    order = [n for n in (norms or list(groups)) if n in groups]
    out = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            for metric in PAIRED_METRICS:
                va, vb = _per_seed(groups[a], metric), _per_seed(groups[b], metric)
                seeds = sorted((s for s in va if s in vb), key=lambda s: (str(type(s)), s))
                stats = t_interval([va[s] - vb[s] for s in seeds])
                out.append({"a": a, "b": b, "metric": metric, "seeds": seeds, **stats,
                            "verdict": verdict(a, b, stats["low"], stats["high"])})
    return out
