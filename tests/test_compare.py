"""`compare`: one run per norm with identical settings, the overlay figure and table, resuming an
interrupted comparison, reusing finished runs, and bad input through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from analysis.compare.tables import write_comparison
from common.config import TrainConfig
from common.errors import UserError
from common.rundir import RunDir
from tests.test_train import assert_one_clear_error, cli, tiny_config


def base_config(data_dir: Path, epochs: int = 2) -> TrainConfig:
    cfg = tiny_config(data_dir, Path(""), epochs=epochs)
    cfg.run.run_dir = ""
    return cfg


def run_compare(norms, cfg, folder, **kw):
    from training.compare import compare

    result = compare(norms, cfg, folder, progress=False, **kw)
    result.comparison = write_comparison(result.folder)  # what the CLI does after training
    return result


@pytest.fixture(scope="module")
def compared(tmp_path_factory, prepared_dir):
    folder = tmp_path_factory.mktemp("cmp") / "study"
    lines: list[str] = []
    result = run_compare(["batch", "layer"], base_config(prepared_dir), folder, log=lines.append)
    return result, lines


def test_one_run_per_norm_with_identical_settings(compared):
    result, _ = compared
    assert result.trained == ["batch", "layer"] and result.reused == []
    configs = {n: RunDir(result.folder / n).read_config()["train"] for n in ("batch", "layer")}
    assert configs["batch"]["model"]["norm"] == "batch" and configs["layer"]["model"]["norm"] == "layer"
    for section in ("optim", "augment", "data"):
        assert configs["batch"][section] == configs["layer"][section]
    assert configs["batch"]["run"]["seed"] == configs["layer"]["run"]["seed"] == 0
    for norm in ("batch", "layer"):
        assert RunDir(result.folder / norm).finished


def test_figure_and_table_come_from_the_runs_metrics(compared):
    result, lines = compared
    c = result.comparison
    from matplotlib.image import imread

    img = imread(c.figure)
    assert img.shape[0] >= 350 and img.shape[1] >= 900
    assert img[..., :3].std() > 0.05  # not a blank canvas
    rows = {r["norm"]: r for r in json.loads(c.json_path.read_text())["rows"]}
    assert set(rows) == {"batch", "layer"}
    for norm, row in rows.items():
        metrics = RunDir(result.folder / norm).read_metrics()
        accs = [m["test_acc"] for m in metrics]
        assert row["best_test_acc"] == pytest.approx(max(accs))
        assert row["best_epoch"] == int(np.argmax(accs)) + 1
        assert row["final_test_acc"] == pytest.approx(accs[-1])
        assert row["epochs_done"] == 2
        # the timing columns are the run's own records, not recomputed
        assert row["wall_seconds"] == pytest.approx(RunDir(result.folder / norm).read_summary().wall_seconds)
        assert row["img_per_s"] == pytest.approx(sum(m["img_per_s"] for m in metrics) / len(metrics))
        header, _, *body = c.table_md.splitlines()
        names = [h.strip() for h in header.strip("|").split("|")]
        (cells,) = [[x.strip() for x in line.strip("|").split("|")] for line in body
                    if line.startswith(f"| {norm} |")]
        assert cells[names.index("best test acc")] == f"{100 * max(accs):.2f}%"
    assert "best test acc" in c.md_path.read_text()


def test_an_interrupted_compare_resumes_only_the_unfinished_runs(prepared_dir, tmp_path):
    folder = tmp_path / "study"

    in_layer = False

    def interrupt_layer_after_epoch_1(message: str) -> None:
        nonlocal in_layer
        if "(layer norm" in message:  # the run's first line: "ResNet-18 (layer norm, ...)"
            in_layer = True
        if in_layer and message.startswith("epoch   1/"):
            raise KeyboardInterrupt  # Ctrl-C while the second run trains

    with pytest.raises(UserError, match="interrupted"):
        run_compare(["batch", "layer"], base_config(prepared_dir), folder, log=interrupt_layer_after_epoch_1)
    assert RunDir(folder / "batch").finished and not RunDir(folder / "layer").finished
    batch_ckpt = (folder / "batch" / "last.pt").stat().st_mtime_ns

    lines: list[str] = []
    result = run_compare(["batch", "layer"], base_config(prepared_dir), folder, log=lines.append)
    assert "resuming the comparison in" in lines[0]
    assert any("batch: already finished" in ln for ln in lines)
    assert any("layer: resuming" in ln for ln in lines)
    assert result.trained == ["layer"] and result.reused == ["batch"]
    assert (folder / "batch" / "last.pt").stat().st_mtime_ns == batch_ckpt  # not retrained
    assert [r["epoch"] for r in RunDir(folder / "layer").read_metrics()] == [1, 2]
    assert (folder / "comparison.png").is_file()


def test_finished_runs_are_reused_without_training(compared, tmp_path):
    result, _ = compared
    runs = [result.folder / "layer", result.folder / "batch"]
    again = run_compare(None, TrainConfig(), tmp_path / "reuse", runs=runs, log=lambda m: None)
    assert again.trained == [] and again.reused == ["layer", "batch"]
    rows = {r["norm"]: r for r in again.comparison.rows}
    assert rows["batch"]["best_test_acc"] == pytest.approx(
        max(m["test_acc"] for m in RunDir(result.folder / "batch").read_metrics()))
    assert json.loads((tmp_path / "reuse" / "compare.json").read_text())["runs"]["batch"] == \
        str((result.folder / "batch").resolve())


def test_write_comparison_needs_a_finished_epoch(tmp_path):
    folder = tmp_path / "empty"
    (folder / "layer").mkdir(parents=True)
    (folder / "compare.json").write_text(json.dumps({"kind": "compare", "norms": ["layer"], "runs": {"layer": "layer"}}))
    with pytest.raises(UserError, match="no run in .* has finished an epoch"):
        write_comparison(folder)


# ---- bad input through the CLI ------------------------------------------------------------------

def test_cli_unknown_norm(prepared_dir, tmp_path):
    proc = cli("compare", "--norms", "batch,instance", "--data", str(prepared_dir), "--run", str(tmp_path / "c"))
    assert_one_clear_error(proc, "unknown normalisation 'instance'", "batch,group,layer")
    assert not (tmp_path / "c").exists()


def test_cli_runs_folder_that_is_not_a_run(prepared_dir, tmp_path):
    (tmp_path / "notarun").mkdir()
    proc = cli("compare", "--runs", str(tmp_path / "notarun"), "--data", str(prepared_dir), "--run", str(tmp_path / "c"))
    assert_one_clear_error(proc, "is not a run directory", "train")


def test_cli_runs_folder_that_has_not_finished(compared, tmp_path):
    result, _ = compared
    partial = tmp_path / "partial"
    shutil.copytree(result.folder / "batch", partial)
    summary = json.loads((partial / "summary.json").read_text())
    (partial / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    proc = cli("compare", "--runs", str(partial), "--run", str(tmp_path / "c"))
    assert_one_clear_error(proc, "has not finished training", "--resume")


def test_cli_refuses_to_resume_a_comparison_with_other_settings(compared, prepared_dir):
    result, _ = compared
    before = (result.folder / "compare.json").read_text()
    proc = cli("compare", "--norms", "batch,layer", "--data", str(prepared_dir), "--run", str(result.folder),
               "--epochs", "5", "--subset", "64", "--test-subset", "50", "--batch-size", "32", "--device", "cpu",
               "--width", "8", "--groups", "8")
    assert_one_clear_error(proc, "already holds a comparison with other settings", "optim.epochs 2 → 5")
    assert (result.folder / "compare.json").read_text() == before


def test_cli_refuses_a_folder_that_is_not_a_comparison(prepared_dir, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    proc = cli("compare", "--data", str(prepared_dir), "--run", str(tmp_path / "busy"))
    assert_one_clear_error(proc, "is not a comparison folder")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_cli_two_runs_with_the_same_norm(compared, tmp_path):
    result, _ = compared
    twin = tmp_path / "twin"
    shutil.copytree(result.folder / "batch", twin)
    proc = cli("compare", "--runs", f"{result.folder / 'batch'},{twin}", "--run", str(tmp_path / "c"))
    assert_one_clear_error(proc, "two runs with the same normalisation")
