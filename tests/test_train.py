"""`train`: run directory contents, exact resume, divergence, and bad input through the CLI."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import TrainConfig
from common.errors import UserError
from common.rundir import METRIC_FIELDS, RunDir
from models.loading import load_run_model

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"seconds", "img_per_s", "wall_seconds"}


def tiny_config(data_dir: Path, run_dir: Path, epochs: int = 3, **optim) -> TrainConfig:
    """3 epochs × 2 steps of 32 on 64 images, scored on 50 test images, the network at width 8
    (`--width 8`: the same wiring, 1/63 of the parameters; these runs test the training machinery,
    tests/test_model.py the network at its published width)."""
    cfg = TrainConfig()
    cfg.model.width, cfg.model.groups = 8, 8
    cfg.data.data_dir = str(data_dir)
    cfg.data.subset, cfg.data.test_subset, cfg.data.val = 64, 50, 0
    cfg.optim.epochs, cfg.optim.batch_size = epochs, 32
    cfg.run.run_dir, cfg.run.device, cfg.run.seed = str(run_dir), "cpu", 0
    for k, v in optim.items():
        setattr(cfg.optim, k, v)
    return cfg


def run_train(cfg: TrainConfig, **kw):
    from training.fit import train

    return train(cfg, log=lambda m: None, progress=False, **kw)


def metrics_without_timing(run: RunDir) -> list[dict]:
    """metrics.csv less its timing columns; empty cells (NaN: no validation split) as None, so
    rows compare equal (NaN != NaN)."""
    return [{k: (None if v != v else v) for k, v in row.items() if k not in TIMING} for row in run.read_metrics()]


def signal_after_steps(monkeypatch, n: int) -> None:
    """Make the next training in this process receive a SIGTERM request right after its `n`-th
    optimizer step (as the signal handler would set it), so it stops at that step boundary and
    saves its mid-epoch state. `monkeypatch.undo()` restores the real Stopper and step."""
    import training.epoch as epoch_module
    import training.fit as fit_module

    stoppers: list = []

    class RecordedStopper(epoch_module.Stopper):
        def __init__(self, log):
            super().__init__(log)
            stoppers.append(self)

    real_step, steps = epoch_module._optimizer_step, []

    def step_then_signal(parts, factor):
        real_step(parts, factor)
        steps.append(1)
        if len(steps) == n:
            stoppers[-1].requested = "SIGTERM"

    monkeypatch.setattr(fit_module, "Stopper", RecordedStopper)
    monkeypatch.setattr(epoch_module, "_optimizer_step", step_then_signal)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, prepared_dir):
    out = tmp_path_factory.mktemp("runs") / "full"
    result = run_train(tiny_config(prepared_dir, out))
    return result


def test_run_directory_contents(full_run, prepared_dir):
    run = full_run.run
    for name in ("config.json", "metrics.csv", "summary.json", "last.pt", "best.pt",
                 "predictions_last.npz", "predictions_best.npz", "curves.png"):
        assert (run.path / name).is_file(), name
    config = run.read_config()
    cfg = TrainConfig.from_dict(config["train"])
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.03, 0.9, 5e-4)
    assert cfg.model.norm == "layer" and cfg.augment.rotate and cfg.augment.cutout
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    assert config["data"]["sha256"]["train"] == manifest["splits"]["train"]["arrays"]["sha256"]
    assert {"torch", "ffcv", "numba", "numpy"} <= set(config["versions"])

    with open(run.metrics_path) as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == METRIC_FIELDS
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1 and r["img_per_s"] > 0 for r in rows)

    summary = run.read_summary()
    assert summary.status == "finished" and summary.epochs_done == 3
    assert summary.best_acc == max(r["test_acc"] for r in rows)
    assert rows[summary.best_epoch - 1]["test_acc"] == summary.best_acc

    # predictions: per test index (first 50), probabilities sum to 1, accuracy matches metrics
    preds = run.read_predictions("last")
    test_labels = np.load(prepared_dir / "test.npz")["labels"][:50]
    np.testing.assert_array_equal(preds.labels, test_labels)
    np.testing.assert_allclose(preds.probs.sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(preds.preds, preds.probs.argmax(1))
    assert preds.accuracy == pytest.approx(rows[-1]["test_acc"])
    best = run.read_predictions("best")
    assert best.accuracy == pytest.approx(summary.best_acc)

    # checkpoints load without executing code and rebuild the model from config.json
    state = torch.load(run.checkpoint_path("last"), weights_only=True)
    assert state["epoch"] == 3 and {"model", "optimizer", "scheduler", "scaler", "rng"} <= set(state)
    model = load_run_model(run, "best")
    assert sum(p.numel() for p in model.parameters()) == 176_402  # the width-8 model config.json describes

    from matplotlib.image import imread

    img = imread(run.curves_path)
    assert img.shape[0] >= 300 and img.shape[1] >= 800


def test_resume_reproduces_an_uninterrupted_run_exactly(full_run, prepared_dir, tmp_path):
    out = tmp_path / "resumed"
    run_train(tiny_config(prepared_dir, out, epochs=1))  # "interrupted" after epoch 1
    result = run_train(tiny_config(prepared_dir, out), resume=out, extra_epochs_to=3)
    assert result.epochs_done == 3
    assert metrics_without_timing(result.run) == metrics_without_timing(full_run.run)
    a = torch.load(full_run.run.checkpoint_path("last"), weights_only=True)["model"]
    b = torch.load(result.run.checkpoint_path("last"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_divergence_stops_with_a_clear_message(prepared_dir, tmp_path):
    cfg = tiny_config(prepared_dir, tmp_path / "nan", epochs=2, lr=1e12)
    with pytest.raises(UserError, match=r"diverged.*in epoch \d+ by step \d+.*lower --lr"):
        run_train(cfg)
    assert RunDir(tmp_path / "nan").read_summary().status == "diverged"


def test_refuses_to_overwrite_a_finished_run(full_run, prepared_dir):
    before = full_run.run.checkpoint_path("last").read_bytes()
    with pytest.raises(UserError, match="finished run"):
        run_train(tiny_config(prepared_dir, full_run.run.path))
    assert full_run.run.checkpoint_path("last").read_bytes() == before


# ---- bad input through the CLI: one line, non-zero exit, no traceback ----------------------------

def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def assert_one_clear_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("args, words", [
    (["--epochs", "0"], ["--epochs"]),
    (["--batch-size", "-1"], ["--batch-size"]),
    (["--norm", "instance"], ["unknown norm", "layer"]),
])
def test_cli_rejects_bad_settings(prepared_dir, tmp_path, args, words):
    proc = cli("train", "--data", str(prepared_dir), "--run", str(tmp_path / "r"), *args)
    assert_one_clear_error(proc, *words)
    assert not (tmp_path / "r").exists()


def test_cli_missing_betons_point_at_prepare(tmp_path):
    proc = cli("train", "--data", str(tmp_path / "nothing"), "--run", str(tmp_path / "r"))
    assert_one_clear_error(proc, "prepare")


def test_cli_resume_without_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_clear_error(cli("train", "--resume", str(tmp_path / "empty")), "no last.pt")


def test_cli_corrupt_checkpoint(full_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(full_run.run.path, broken)
    (broken / "last.pt").write_bytes(b"not a checkpoint at all")
    assert_one_clear_error(cli("train", "--resume", str(broken), "--epochs", "4"), "last.pt", "not a loadable")


def test_cli_finished_run_is_not_overwritten(full_run, prepared_dir):
    before = full_run.run.metrics_path.read_text()
    proc = cli("train", "--data", str(prepared_dir), "--run", str(full_run.run.path))
    assert_one_clear_error(proc, "finished run")
    assert full_run.run.metrics_path.read_text() == before


# ---- bf16 autocast on a CPU with native bf16 ------------------------------------------------------

def _native_bf16() -> bool:
    from common.hardware import cpu_has_native_bf16

    return cpu_has_native_bf16()


needs_bf16 = pytest.mark.skipif(not _native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")


@needs_bf16
def test_bf16_resume_reproduces_an_uninterrupted_bf16_run_exactly(prepared_dir, tmp_path):
    def bf16(cfg: TrainConfig) -> TrainConfig:
        cfg.run.amp = True
        return cfg

    full = run_train(bf16(tiny_config(prepared_dir, tmp_path / "full", epochs=2)))
    assert full.run.read_config()["precision"] == "bf16"
    out = tmp_path / "resumed"
    run_train(bf16(tiny_config(prepared_dir, out, epochs=1)))
    resumed = run_train(bf16(tiny_config(prepared_dir, out)), resume=out, extra_epochs_to=2)
    assert metrics_without_timing(resumed.run) == metrics_without_timing(full.run)
    a = torch.load(full.run.checkpoint_path("last"), weights_only=True)["model"]
    b = torch.load(resumed.run.checkpoint_path("last"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_bf16
def test_bf16_divergence_stops_with_a_clear_message(prepared_dir, tmp_path):
    cfg = tiny_config(prepared_dir, tmp_path / "nan", epochs=2, lr=1e12)
    cfg.run.amp = True
    with pytest.raises(UserError, match=r"diverged.*in epoch \d+ by step \d+.*lower --lr"):
        run_train(cfg)
    assert RunDir(tmp_path / "nan").read_summary().status == "diverged"


def test_onecycle_with_ema_resumes_mid_epoch_bit_identically(prepared_dir, tmp_path, monkeypatch):
    """A stop after step 1 of epoch 2 (of 2 × 2 steps) and a resume give the uninterrupted run's
    metrics, weights, EMA weights and lr, with the per-step schedule and the EMA in the checkpoint."""
    from training.epoch import Interrupted

    fast = {"schedule": "onecycle", "ema": 0.5, "nesterov": True, "decay_all": False, "label_smoothing": 0.1}
    reference = run_train(tiny_config(prepared_dir, tmp_path / "ref", epochs=2, **fast)).run
    signal_after_steps(monkeypatch, 3)  # the first step of epoch 2
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted, match="stopped in epoch 2 after step 1"):
        run_train(tiny_config(prepared_dir, cut, epochs=2, **fast))
    monkeypatch.undo()
    saved = torch.load(RunDir(cut).checkpoint_path("last"), weights_only=True)
    assert saved["partial"]["step"] == 1 and saved["ema_updates"] == 3 and saved["scheduler"]["last_epoch"] == 3

    run_train(tiny_config(prepared_dir, cut, epochs=2, **fast), resume=cut)
    assert metrics_without_timing(RunDir(cut)) == metrics_without_timing(reference)
    a = torch.load(reference.checkpoint_path("last"), weights_only=True)
    b = torch.load(RunDir(cut).checkpoint_path("last"), weights_only=True)
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    assert not any(torch.equal(a["ema"][k], a["model"][k]) for k in a["model"] if k.endswith("conv1.weight"))
    # the analysis commands load the averaged weights and say so
    model = load_run_model(reference, "last")
    assert all(torch.equal(v, a["ema"][k]) for k, v in model.state_dict().items())
    assert reference.weights_label("best") == "best.pt (EMA weights)"
    assert reference.read_summary().decided_on == "last epoch" and reference.read_summary().best_epoch == 2
    # evaluate --raw-weights scores the weights the optimizer trained, saving nothing over the
    # average's predictions
    from analysis.inspection.evaluate import confusion_matrix, evaluate
    from analysis.loading import load_test_set, open_run, to_model_input
    from models.resnet import build_model

    saved_predictions = reference.predictions_path("last").read_bytes()
    raw = evaluate(reference.path, which="last", raw_weights=True)
    trained = build_model(reference.train_config().model)
    trained.load_state_dict(a["model"])
    inputs = open_run(reference.path, "last")
    images, labels = load_test_set(inputs)
    with torch.no_grad():
        logits = trained.eval()(to_model_input(images, inputs.mean, inputs.std))
    preds, averaged = logits.argmax(1).numpy(), reference.read_predictions("last").preds
    classes = len(raw.classes)
    assert (confusion_matrix(labels, preds, classes) != confusion_matrix(labels, averaged, classes)).any()
    assert (raw.confusion == confusion_matrix(labels, preds, classes)).all()
    assert raw.source == "recomputed from the raw weights, not the EMA"
    assert json.loads(raw.json_path.read_text())["weights"] == "raw"
    assert reference.predictions_path("last").read_bytes() == saved_predictions
    assert reference.weights_label("last", raw=True) == "last.pt (raw weights, not the EMA)"


def test_raw_weights_is_an_error_on_a_run_without_ema(full_run):
    from analysis.inspection.evaluate import evaluate

    with pytest.raises(UserError, match="trained without --ema, so its only weights are the raw ones"):
        evaluate(full_run.run.path, raw_weights=True)


def test_the_guard_stops_a_finite_blow_up(prepared_dir, tmp_path, monkeypatch):
    """lr 1e6 with BatchNorm shortcuts keeps the loss finite but far above chance; the guard (here
    over 1-step windows: the tiny run has 2 steps an epoch) ends the run as diverged, naming it."""
    from training.epoch import BlowUpGuard

    monkeypatch.setattr(BlowUpGuard, "WINDOW", 1)
    with pytest.raises(UserError, match=r"diverged: the train loss averaged .* above the limit 6\.91"):
        run_train(tiny_config(prepared_dir, tmp_path / "blown", epochs=3, lr=1e6))
    assert RunDir(tmp_path / "blown").read_summary().status == "diverged"


def test_flip_tta_reports_both_accuracies(full_run):
    """evaluate --tta on a run trained without --tta-shift scores flip TTA: the mean of each
    image's logits (fp32, as saved) and its mirror's (in the run's precision on this CPU), and
    reports the plain accuracy (the saved predictions') beside it."""
    from analysis.inspection.evaluate import evaluate
    from analysis.inspection.test_predictions import tta_views
    from analysis.loading import load_model, load_test_set, open_run, to_model_input

    result = evaluate(full_run.run.path, which="last", tta=True)
    saved = full_run.run.read_predictions("last")
    assert result.plain_accuracy == pytest.approx(saved.accuracy) and result.tta_name == "flip TTA"
    inputs = open_run(full_run.run.path, "last")
    images, labels = load_test_set(inputs)
    model = load_model(inputs)
    views = tta_views(inputs)
    x = to_model_input(images, inputs.mean, inputs.std)
    with torch.no_grad():
        plain = model(x).float()
        with views.precision():
            mirror = model(views.prepare(x.flip(3))).float()
    assert result.accuracy == float(((plain + mirror).argmax(1).numpy() == labels).mean())
    report = json.loads(result.json_path.read_text())
    assert report["tta"] is True and report["tta_views"] == "flip TTA"
    assert report["accuracy_without_tta"] == pytest.approx(saved.accuracy, abs=1e-6)


def test_train_tta_scores_the_final_test_pass_both_ways(full_run, prepared_dir, tmp_path):
    """--tta --tta-shift 1: the test pass also scores TTA with the shifted views, equal to what
    `evaluate --tta` computes from the saved weights (it reads the run's shift); metrics.csv,
    summary.json and the done line carry it beside the plain accuracy, which (like the saved
    predictions) stays the plain pass's. Runs without it leave it empty.
    The run is also `--weight-std` (the flag's end-to-end case): its checkpoint reloads as a
    weight-standardized model, which is why `evaluate` scores what training did."""
    from analysis.inspection.evaluate import evaluate
    from models.loading import load_run_model
    from models.resnet import StdConv2d

    cfg = tiny_config(prepared_dir, tmp_path / "tta", epochs=1)
    cfg.run.tta, cfg.run.tta_shift = True, 1
    cfg.model.weight_std = True
    result = run_train(cfg)
    assert any(isinstance(m, StdConv2d) for m in load_run_model(result.run, "last").modules())
    row = result.run.read_metrics()[-1]
    summary = result.run.read_summary()
    tta = evaluate(result.run.path, which="last", tta=True)
    assert row["test_acc_tta"] == summary.final_test_acc_tta == result.final_test_acc_tta == tta.accuracy
    assert row["test_acc"] == summary.final_test_acc == tta.plain_accuracy
    assert result.tta_name == tta.tta_name == "flip + 1-px shift TTA"
    assert evaluate(result.run.path, which="last", tta=True, tta_shift=0).tta_name == "flip TTA"
    assert result.run.read_predictions("last").accuracy == row["test_acc"]
    assert math.isnan(full_run.run.read_metrics()[-1]["test_acc_tta"])
    assert full_run.run.read_summary().final_test_acc_tta is None
    from analysis.report.run_page import read_run, run_document

    facts = dict(run_document(result.run, read_run(result.run), {}).facts)
    assert facts["final test accuracy"].endswith("with flip + 1-px shift TTA)")
