"""`train`'s flags and run-environment: recipes, resume overrides, locks, torchrun compare, log output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_flags import FLAGS, given_environment, train_config
from common.config import RECIPES, TrainConfig, apply_recipe
from common.errors import UserError
from common.rundir import RunDir
from tests.test_reliability import train_argv, wait_for
from tests.test_train import ROOT, assert_one_clear_error, cli


def test_every_flag_is_a_config_field_or_says_why_not():
    fields = {(s, f.name) for s in ("data", "augment", "model", "optim", "run")
              for f in __import__("dataclasses").fields(getattr(TrainConfig(), s))}
    for flag in FLAGS:
        assert flag.target is None or flag.target in fields, flag.name
    assert {f.name for f in FLAGS if f.target is None} == {"recipe", "quiet"}


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_flag_not_given_never_overrides_the_recipe(recipe):
    assert train_config({"recipe": recipe}).to_dict() == apply_recipe(TrainConfig(), recipe).to_dict()


def test_a_recipe_that_sets_lr_keeps_it_and_a_given_flag_wins(monkeypatch):
    import cli_flags

    def recipe_with_lr(cfg, name):
        cfg.optim.lr, cfg.augment.flip = 0.5, False
        return cfg

    monkeypatch.setattr(cli_flags, "apply_recipe", recipe_with_lr)
    assert train_config({"recipe": "fast"}).optim.lr == 0.5  # the flag's default (0.03) does not sneak in
    cfg = train_config({"recipe": "fast", "lr": 0.1, "flip": True, "fill": "1,2,3"})
    assert (cfg.optim.lr, cfg.augment.flip, cfg.augment.fill) == (0.1, True, (1, 2, 3))


def test_the_assignment_recipe_is_the_original_model_and_augmentation():
    cfg = apply_recipe(TrainConfig(), "assignment")
    assert (cfg.model.norm, cfg.model.shortcut_norm, cfg.model.zero_init) == ("layer", "batch", False)
    assert (cfg.augment.border, cfg.augment.flip, cfg.augment.pad, cfg.optim.weight_decay) == ("reflect", False, 2, 0.0)


def test_the_default_model_is_layernorm_with_batchnorm_shortcuts_and_says_so():
    """The measured choice (docs/BENCHMARKS.md, issue 13): LayerNorm main path, BatchNorm on the 3
    projection shortcuts, zero-init; `summary` prints it and a run's config records it."""
    cfg = TrainConfig()
    assert (cfg.model.norm, cfg.model.shortcut_norm, cfg.model.zero_init) == ("layer", "batch", True)
    out = subprocess.run([sys.executable, "cli.py", "summary"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == ("ResNet-18: LayerNorm (GroupNorm(1, C)) on the stem and main path, "
                                          "BatchNorm2d on the 3 projection shortcuts; zero-init last norm per block")


def test_a_run_written_before_shortcut_norm_existed_loads_as_it_was_built(tmp_path):
    """Runs saved before the flag had the main path's norm on their shortcuts: reading their
    config must rebuild that model (BatchNorm's extra buffers would not load into it)."""
    from models import ResNet18
    from models.loading import load_run_model

    raw = TrainConfig().to_dict()
    del raw["model"]["shortcut_norm"]
    from common.upgrade import upgrade_config

    assert TrainConfig.from_dict(upgrade_config({"train": raw})["train"]).model.shortcut_norm == "same"
    assert TrainConfig.from_dict(TrainConfig().to_dict()).model.shortcut_norm == "batch"
    run = RunDir(tmp_path / "old-run")
    run.path.mkdir()
    run.write_config({"train": raw, "data": {}})
    run.save_checkpoint("best", {"model": ResNet18("layer").state_dict(), "epoch": 1})  # pure LayerNorm
    model = load_run_model(run, "best")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_only_environment_flags_reach_a_resume():
    assert given_environment({"device": "cpu", "workers": 1, "lr": 0.5, "compile": None}) == {
        ("run", "device"): "cpu", ("data", "workers"): 1}


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_cli_rejects_non_finite_numbers(prepared_dir, tmp_path, value):
    proc = cli("train", "--data", str(prepared_dir), "--run", str(tmp_path / "r"), "--lr", value)
    assert_one_clear_error(proc, "--lr", "finite")
    assert not (tmp_path / "r").exists()


def test_resume_takes_new_environment_flags_and_refuses_recipe_flags(prepared_dir, tmp_path):
    run = tmp_path / "r"
    first = cli("train", "--data", str(prepared_dir), "--run", str(run), "--epochs", "1", "--subset", "64",
                "--batch-size", "32", "--test-subset", "20", "--width", "8", "--loader", "torch", "--device", "cpu", "--quiet",
                "--workers", "2")
    assert first.returncode == 0, first.stderr
    assert_one_clear_error(cli("train", "--resume", str(run), "--epochs", "2", "--lr", "0.1"), "--lr", "resum")
    again = cli("train", "--resume", str(run), "--epochs", "2", "--workers", "1", "--quiet")
    assert again.returncode == 0, again.stderr
    config = RunDir(run).read_config()
    assert config["train"]["data"]["workers"] == 1 and config["train"]["optim"]["epochs"] == 2
    (change,) = config["resumes"]
    assert change["at_epoch"] == 1 and change["changed"]["data.workers"] == [2, 1]


def test_a_second_process_on_a_training_run_is_refused(prepared_dir, tmp_path):
    run = tmp_path / "busy"
    args = [*train_argv(prepared_dir, run)]
    args[args.index("--epochs") + 1] = "1000"  # still running when the second process starts (killed below)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: RunDir(run).has_checkpoint("last"), proc)
        second = cli("train", "--resume", str(run), "--quiet")
        assert_one_clear_error(second, str(run), "in use by another process", f"pid {proc.pid} on host")
    finally:
        proc.kill()
        proc.communicate()
    # the holder died: its lock is taken over, and the run continues
    more = str(RunDir(run).load_checkpoint("last")["epoch"] + 1)
    done = cli("train", "--resume", str(run), "--epochs", more, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "took over the lock" in done.stdout


def test_torchrun_compare_with_batchnorm_finishes_in_sync(prepared_dir, tmp_path):
    """One process group for both runs (the second used to hang), rank 0 alone writes and prints,
    and BatchNorm's running statistics agree across ranks (the digests used to differ: exit 2)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed beside this Python")
    folder = tmp_path / "cmp"
    args = ["--epochs", "1", "--batch-size", "32", "--subset", "256", "--test-subset", "50", "--width", "8",
            "--loader", "torch", "--device", "cpu",
            "--quiet", "--workers", "1"]  # one loader thread per rank on 2 cores
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(ROOT / "cli.py"), "compare",
                           "--norms", "batch,layer", "--data", str(prepared_dir), "--run-dir", str(folder), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("wrote ") == 3  # figure, md, json: once
    record = json.loads((folder / "compare.json").read_text())
    assert record["norms"] == ["batch", "layer"]
    for norm in ("batch", "layer"):
        summary = RunDir(folder / norm).read_summary()
        assert summary.finished and summary.processes == 2 and summary.weights_in_sync
    assert len(list(tmp_path.iterdir())) == 1  # both ranks used the one folder


def test_progress_is_a_line_every_n_seconds_off_a_terminal():
    from training.progress import Progress

    lines: list[str] = []
    progress = Progress(10, 0, "epoch 1/3", True, lines.append, stream=io.StringIO(), every=0.0)
    for _ in range(3):
        progress.set({"loss": "2.000", "img/s": "33"})
        progress.update()
    progress.close()
    assert lines == [f"epoch 1/3: step {i}/10  loss 2.000  img/s 33" for i in (1, 2, 3)]
    quiet: list[str] = []
    Progress(10, 0, "x", False, quiet.append, stream=io.StringIO(), every=0.0).update()
    assert quiet == []


def test_fast_recipe_trains_weight_standardized_convs_unless_told_not_to():
    """`--recipe fast` has --weight-std (+1.9 points after 15 epochs, docs/BENCHMARKS.md); the
    flag turns it off, and the other recipes keep plain convs."""
    assert train_config({"recipe": "fast"}).model.weight_std is True
    assert train_config({"recipe": "fast", "weight_std": False}).model.weight_std is False
    assert train_config({}).model.weight_std is False
    assert train_config({"recipe": "assignment"}).model.weight_std is False
    from models.summary import describe_norms  # what `summary --recipe fast` and its --weight-std print

    assert describe_norms(train_config({"recipe": "fast"}).model).endswith("; weight-standardized convs")
    assert "standardized" not in describe_norms(train_config({}).model)


def test_fast_recipe_cutout_flag_brings_back_its_8_pixel_cutout():
    cfg = train_config({"recipe": "fast", "cutout": True})
    assert (cfg.augment.cutout, cfg.augment.cutout_size, cfg.augment.cutout_p) == (True, 8, 1.0)


def test_fast_recipe_scores_the_test_set_at_its_end_unless_asked_for_every_epoch():
    """A fixed schedule needs only the last epoch's score, so `--recipe fast` skips the per-epoch
    test pass on every device (on a CPU it is a sixth of an epoch); the flag brings the curve back,
    and the default recipe keeps the device's default (None: epoch on the CPU, needed on CUDA)."""
    assert train_config({"recipe": "fast"}).run.test_every == "needed"
    assert train_config({"recipe": "fast", "test_every": "epoch"}).run.test_every == "epoch"
    assert train_config({}).run.test_every is None


def test_fast_recipe_reports_tta_beside_the_plain_accuracy():
    """TTA helped every model measured (docs/BENCHMARKS.md), so `--recipe fast` scores it at its
    test pass, with the 1-pixel shifts (airbench's six views); --tta-shift 0 keeps the flip only,
    --no-tta drops the extra forwards, and other recipes leave it off."""
    fast = train_config({"recipe": "fast"}).run
    assert fast.tta is True and fast.tta_shift == 1
    assert train_config({"recipe": "fast", "tta_shift": 0}).run.tta_shift == 0
    assert train_config({"recipe": "fast", "tta": False}).run.tta is False
    assert train_config({}).run.tta is False and train_config({}).run.tta_shift == 0
    with pytest.raises(UserError, match="--tta-shift must be between 0 and 8 pixels, got 9"):
        train_config({"tta_shift": 9}).validate()
