"""Normalisation comparisons over several seeds: the statistics (analysis/compare/stats.py) on numbers
checked by hand, and write_comparison on a compare folder of faked runs with known metrics
(3 seeds × 2 norms, validation and test disagreeing on the best epoch)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from analysis.compare.stats import NO_DIFFERENCE, mean_sd, paired_differences, seed_summary, t_interval, verdict
from analysis.compare.tables import write_comparison
from common import compare_folder
from common.compare_folder import CompareRecord
from common.config import TrainConfig
from common.records import RunSummary
from common.rundir import METRIC_FIELDS, RunDir

T_975_2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2), from tables: 4.303

# ---- the statistics -------------------------------------------------------------------------------


def test_mean_and_sample_sd():
    s = mean_sd([0.48, 0.49, 0.47])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.48) and s["sd"] == pytest.approx(0.01)
    one = mean_sd([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and one["sd"] is None  # undefined with one seed
    assert mean_sd([])["mean"] is None
    assert mean_sd([1.0, math.nan, None, 3.0])["n"] == 2  # NaN / missing values are not counted


def test_interval_on_hand_computed_numbers():
    r = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, half-width t(0.975, 2) · 1/√3 = 2.484
    assert r["n"] == 3 and r["mean"] == pytest.approx(2.0) and r["sd"] == pytest.approx(1.0)
    assert r["t"] == pytest.approx(T_975_2) and r["half_width"] == pytest.approx(2.4841, abs=1e-4)
    assert r["low"] == pytest.approx(-0.4841, abs=1e-4) and r["high"] == pytest.approx(4.4841, abs=1e-4)
    assert verdict("A", "B", r["low"], r["high"]) == NO_DIFFERENCE == "no difference detected at this budget"

    r = t_interval([1.0, 1.1, 0.9])  # mean 1, sd 0.1, half-width 0.2484: above 0
    assert r["low"] == pytest.approx(1 - 0.24841, abs=1e-4) and r["high"] == pytest.approx(1 + 0.24841, abs=1e-4)
    assert verdict("A", "B", r["low"], r["high"]) == "A > B"
    r = t_interval([-1.0, -1.1, -0.9])
    assert verdict("A", "B", r["low"], r["high"]) == "B > A"

    r = t_interval([0.5])  # one shared seed: a mean, no interval, no verdict
    assert r["mean"] == 0.5 and r["sd"] is None and r["low"] is None and r["high"] is None
    assert verdict("A", "B", r["low"], r["high"]) == NO_DIFFERENCE
    assert t_interval([])["mean"] is None


def test_pairs_use_only_the_seeds_both_norms_have():
    rows = [{"norm": "batch", "seed": s, "final_test_acc": v, "best_test_acc": v, "wall_seconds": 10.0}
            for s, v in ((0, 0.60), (1, 0.61), (2, 0.59), (3, 0.90))] + \
           [{"norm": "layer", "seed": s, "final_test_acc": v, "best_test_acc": v, "wall_seconds": 20.0}
            for s, v in ((0, 0.50), (1, 0.50), (2, 0.50))]
    summary = {s["norm"]: s for s in seed_summary(rows)}
    assert summary["batch"]["n"] == 4 and summary["layer"]["n"] == 3
    assert summary["layer"]["wall_seconds"]["sd"] == 0.0
    (final, best) = paired_differences(rows, ["batch", "layer"])
    assert final["metric"] == "final_test_acc" and best["metric"] == "best_test_acc"
    assert final["seeds"] == [0, 1, 2] and final["n"] == 3  # seed 3 has no layer run
    assert final["mean"] == pytest.approx(0.10) and final["sd"] == pytest.approx(0.01)
    assert final["verdict"] == "batch > layer"
    (rev, _) = paired_differences(rows, ["layer", "batch"])  # the order of the norms sets A and B
    assert rev["a"] == "layer" and rev["mean"] == pytest.approx(-0.10) and rev["verdict"] == "batch > layer"


# ---- a compare folder of faked runs --------------------------------------------------------------

SEEDS = (0, 1, 2)
A = (0.0, 0.01, -0.01)  # per-seed shift of both norms
B = (0.01, 0.02, 0.03)  # batch − layer at the chosen (best-validation) epoch 3
C = (0.010, 0.011, 0.009)  # batch − layer at the final epoch 4
VAL_FIELDS = ("val_loss", "val_acc")


def metric_rows(test_acc, val_acc) -> list[dict[str, float]]:
    rows = []
    for e, (t, v) in enumerate(zip(test_acc, val_acc), start=1):
        rows.append({"epoch": e, "train_loss": 2.0 - 0.2 * e, "train_acc": 0.3 + 0.05 * e, "test_loss": 1.9 - 0.1 * e,
                     "test_acc": t, "lr": 0.03, "seconds": 30.0, "img_per_s": 500.0 + e,
                     "val_loss": 1.8 - 0.1 * e if v is not None else None, "val_acc": v})
    return rows


def write_metrics(run: RunDir, rows: list[dict[str, float]], val: bool = True) -> None:
    """metrics.csv as training writes it, with the validation columns (None: an empty cell), or
    without them (val=False: a run written before the validation split existed)."""
    if val and "val_acc" in METRIC_FIELDS:
        run.write_metrics(rows)
        return
    fields = [f for f in METRIC_FIELDS if f not in VAL_FIELDS] + (list(VAL_FIELDS) if val else [])
    with open(run.metrics_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in fields})


def fake_run(path: Path, norm: str, seed: int, rows: list[dict[str, float]], wall: float,
             status: str = "finished", val: bool = True) -> RunDir:
    path.mkdir(parents=True)
    run = RunDir(path)
    cfg = TrainConfig()
    cfg.model.norm, cfg.run.seed = norm, seed
    run.write_config({"train": cfg.to_dict(), "versions": {}})
    write_metrics(run, rows, val)
    run.write_summary(RunSummary.from_dict({"status": status, "epochs_done": len(rows), "epochs": len(rows),
                                            "wall_seconds": wall}))
    return run


def make_seeded_compare(folder: Path, extra_runs: bool = False) -> Path:
    """batch and layer × seeds 0, 1, 2 in <folder>/<norm>-seed<k>/. Validation picks epoch 3 while the
    test set would pick epoch 2; keys in compare.json are deliberately not the norm names."""
    runs = {}
    for k, s in enumerate(SEEDS):
        batch = metric_rows([0.40, 0.55, 0.50 + A[k], 0.48 + A[k]], [0.45, 0.48, 0.52, 0.51])
        layer = metric_rows([0.38, 0.53, 0.50 + A[k] - B[k], 0.48 + A[k] - C[k]], [0.44, 0.47, 0.50, 0.49])
        fake_run(folder / f"batch-seed{s}", "batch", s, batch, wall=100.0 + 10 * k)
        fake_run(folder / f"layer-seed{s}", "layer", s, layer, wall=200.0)
        runs[f"first-{s}"] = f"batch-seed{s}"
        runs[f"second-{s}"] = f"layer-seed{s}"
    if extra_runs:  # an unfinished fourth batch seed: in the per-run table, not in the statistics
        fake_run(folder / "batch-seed3", "batch", 3, metric_rows([0.9, 0.9], [0.9, 0.9]), wall=50.0,
                 status="interrupted")
        runs["first-3"] = "batch-seed3"
    compare_folder.write_compare(folder, CompareRecord(
        norms=["batch", "layer"], runs=runs, settings={"epochs": 4, "seeds": list(SEEDS), "subset": 2000}))
    return folder


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    folder = make_seeded_compare(tmp_path_factory.mktemp("seeds") / "study")
    return folder, write_comparison(folder)


def test_runs_are_grouped_by_their_config_and_best_epoch_is_chosen_on_validation(seeded):
    folder, result = seeded
    rows = json.loads(result.json_path.read_text())["rows"]
    assert [(r["norm"], r["seed"]) for r in rows] == [(n, s) for s in SEEDS for n in ("batch", "layer")]
    for r in rows:
        k = r["seed"]
        assert r["chosen_on"] == "validation" and r["best_epoch"] == 3  # the test set would pick epoch 2
        shift = A[k] if r["norm"] == "batch" else A[k] - B[k]
        assert r["best_test_acc"] == pytest.approx(0.50 + shift)
        assert r["best_val_acc"] == pytest.approx(0.52 if r["norm"] == "batch" else 0.50)
        final = 0.48 + A[k] - (0 if r["norm"] == "batch" else C[k])
        assert r["final_test_acc"] == pytest.approx(final)
        assert r["key"] in (f"first-{k}", f"second-{k}")


def test_comparison_json_has_the_seed_statistics(seeded):
    _, result = seeded
    out = json.loads(result.json_path.read_text())
    assert out["settings"]["seeds"] == [0, 1, 2]
    summary = {s["norm"]: s for s in out["seed_summary"]}
    assert summary["batch"]["n"] == summary["layer"]["n"] == 3 and summary["batch"]["seeds"] == [0, 1, 2]
    assert summary["batch"]["final_test_acc"]["mean"] == pytest.approx(0.48)
    assert summary["batch"]["final_test_acc"]["sd"] == pytest.approx(0.01)
    assert summary["batch"]["best_test_acc"]["mean"] == pytest.approx(0.50)
    assert summary["layer"]["best_test_acc"]["mean"] == pytest.approx(0.48)
    assert summary["layer"]["best_test_acc"]["sd"] == pytest.approx(math.sqrt(0.0003))  # shifts .01, .01, −.02
    assert summary["batch"]["wall_seconds"]["mean"] == pytest.approx(110.0)
    assert summary["batch"]["wall_seconds"]["sd"] == pytest.approx(10.0)
    diffs = {d["metric"]: d for d in out["paired_differences"]}
    assert len(out["paired_differences"]) == 2
    best, final = diffs["best_test_acc"], diffs["final_test_acc"]
    assert (best["a"], best["b"], best["n"], best["seeds"]) == ("batch", "layer", 3, [0, 1, 2])
    # best-epoch differences 0.01, 0.02, 0.03: mean 0.02 ± 4.303 · 0.01/√3 = ±0.02484 → spans 0
    assert best["mean"] == pytest.approx(0.02) and best["sd"] == pytest.approx(0.01)
    assert best["low"] == pytest.approx(0.02 - 0.024841, abs=1e-5)
    assert best["high"] == pytest.approx(0.02 + 0.024841, abs=1e-5)
    assert best["verdict"] == NO_DIFFERENCE
    # final differences 0.010, 0.011, 0.009: mean 0.010 ± 0.002484 → above 0
    assert final["mean"] == pytest.approx(0.010) and final["low"] == pytest.approx(0.010 - 0.0024841, abs=1e-6)
    assert final["verdict"] == "batch > layer"
    assert "95% t-interval of the mean paired difference over the seeds both norms share" in out["interval"]
    assert result.seed_summary == out["seed_summary"] and result.paired_differences == out["paired_differences"]


def test_markdown_has_the_summary_and_the_verdicts(seeded):
    _, result = seeded
    md = result.md_path.read_text()
    assert md.strip() == result.table_md.strip()  # what the CLI prints is what the file holds
    assert "| norm | seed | shortcut norm | best test acc | best epoch | chosen on |" in md
    assert "| batch | 1 | batch | 51.00% | 3 | validation | 49.00% |" in md
    assert "mean ± sd over 3 seeds" in md
    assert "| batch | 3 | 48.00% ± 1.00% | 50.00% ± 1.00% | 1m50.0s ± 10.0s |" in md
    assert "| layer | 3 | 47.00% ± 0.90% | 48.00% ± 1.73% | 3m20.0s ± 0.0s |" in md
    assert "| batch − layer | final test acc | 3 | +1.00 pp | [+0.75, +1.25] pp | batch > layer |" in md
    assert ("| batch − layer | best-epoch test acc | 3 | +2.00 pp | [-0.48, +4.48] pp | "
            "no difference detected at this budget |") in md
    assert "95% t-interval of the mean paired difference over the seeds both norms share" in md


def test_figure_shows_means_with_a_min_max_band(seeded):
    folder, result = seeded
    from matplotlib.image import imread

    img = imread(result.figure)
    assert img.shape[0] >= 350 and img.shape[1] >= 900
    assert img[..., :3].std() > 0.05  # not a blank canvas

    from analysis.figures import comparison_figure

    series = {n: [RunDir(folder / f"{n}-seed{s}").read_metrics() for s in SEEDS] for n in ("batch", "layer")}
    fig = comparison_figure(series, "t")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "band: min–max over 3 seeds" in labels and "BatchNorm (mean)" in labels
    acc = fig.axes[1]
    assert len(acc.collections) == 4  # a band per norm for train and test
    test_line = acc.lines[1]  # batch, test: the mean over the seeds, in percent
    assert list(test_line.get_ydata()) == pytest.approx([40.0, 55.0, 50.0, 48.0])
    single = comparison_figure({n: runs[:1] for n, runs in series.items()}, "t")
    assert not single.axes[1].collections  # one seed: no band, as before
    assert "band: min–max over 3 seeds" not in [t.get_text() for t in single.legends[0].get_texts()]


def test_unfinished_runs_are_left_out_of_the_statistics(tmp_path):
    folder = make_seeded_compare(tmp_path / "study", extra_runs=True)
    result = write_comparison(folder)
    out = json.loads(result.json_path.read_text())
    assert len(out["rows"]) == 7  # the interrupted run is still in the per-run table
    assert {s["norm"]: s["n"] for s in out["seed_summary"]} == {"batch": 3, "layer": 3}
    assert out["left_out"] == [{"key": "first-3", "run": str(folder / "batch-seed3"), "status": "interrupted"}]
    assert "first-3 (interrupted)" in result.table_md
    from analysis.compare.tables import figure_series

    curves: list[list[dict[str, float]]] = [[{"epoch": float(i)}] for i in range(7)]
    assert [len(runs) for runs in figure_series(out["rows"], curves, True).values()] == [3, 3]  # finished only
    assert [len(runs) for runs in figure_series(out["rows"], curves, False).values()] == [4, 3]


def test_single_seed_stays_as_before_and_falls_back_to_test(tmp_path):
    """One run per norm: no seed column or statistics. A run without validation columns (older) and
    one trained with --val 0 (empty / NaN cells) both choose the best epoch on test accuracy."""
    folder = tmp_path / "one"
    rows = metric_rows([0.40, 0.55, 0.50], [None, None, None])
    fake_run(folder / "batch", "batch", 0, rows, wall=60.0, val=False)  # no val columns at all
    fake_run(folder / "group", "group", 0, rows, wall=60.0)  # empty val cells
    nan_rows = [{**r, "val_loss": math.nan, "val_acc": math.nan} for r in rows]
    fake_run(folder / "layer", "layer", 0, nan_rows, wall=60.0)
    compare_folder.write_compare(folder, CompareRecord(norms=["batch", "group", "layer"],
                                                       runs={n: n for n in ("batch", "group", "layer")},
                                                       settings={"epochs": 3, "seed": 0}))
    result = write_comparison(folder)
    out = json.loads(result.json_path.read_text())
    assert set(out) == {"rows", "settings"}
    for r in out["rows"]:
        assert r["chosen_on"] == "test" and r["best_epoch"] == 2 and r["best_test_acc"] == pytest.approx(0.55)
        assert r["best_val_acc"] is None
    assert result.table_md.splitlines()[0] == ("| norm | shortcut norm | best test acc | best epoch | chosen on | "
                                               "final test acc | final train acc | epochs | wall time | train img/s |")
    assert "| batch | batch | 55.00% | 2 | test | 50.00% |" in result.table_md
    assert "seeds" not in result.table_md and "t-interval" not in result.table_md
