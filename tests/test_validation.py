"""The validation split (issue 15): held out of training, class-stratified, recorded in the run,
and the only split that decides anything (the LR schedule and best.pt) when present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.rundir import RunDir
from pipeline.val_split import stratified_split
from tests.test_train import metrics_without_timing, run_train, tiny_config


def test_split_is_disjoint_covering_stratified_and_seeded():
    labels = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 30, 30, 30, 30, 30])  # unbalanced classes
    train, val = stratified_split(labels, 80, seed=3)
    assert len(val) == 80 and len(np.intersect1d(train, val)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    share = np.bincount(labels[val], minlength=10)
    expected = np.bincount(labels, minlength=10) * 80 / len(labels)
    assert np.all(np.abs(share - expected) <= 1)  # each class in proportion, within rounding
    assert np.array_equal(stratified_split(labels, 80, seed=3)[1], val)  # a pure function of the seed
    assert not np.array_equal(stratified_split(labels, 80, seed=4)[1], val)
    with pytest.raises(UserError, match="leaves no training images"):
        stratified_split(labels, len(labels), seed=0)


@pytest.fixture
def scheduler_inputs(monkeypatch):
    """What the training loop hands to ReduceLROnPlateau each epoch."""
    seen: list[float] = []
    real = torch.optim.lr_scheduler.ReduceLROnPlateau.step

    def step(self, metrics, *args, **kwargs):
        seen.append(float(metrics))
        return real(self, metrics, *args, **kwargs)

    monkeypatch.setattr(torch.optim.lr_scheduler.ReduceLROnPlateau, "step", step)
    return seen


def test_validation_decides_the_schedule_and_best_pt(prepared_dir, tmp_path, scheduler_inputs):
    cfg = tiny_config(prepared_dir, tmp_path / "val", epochs=3)
    cfg.data.subset, cfg.data.val = 200, 40
    result = run_train(cfg)
    run = result.run
    rows = run.read_metrics()
    assert scheduler_inputs == pytest.approx([r["val_loss"] for r in rows], rel=1e-5)  # not test, not train
    best = max(rows, key=lambda r: r["val_acc"])
    summary = run.read_summary()
    assert summary.decided_on == "validation" and summary.best_epoch == best["epoch"]
    assert summary.best_acc == pytest.approx(best["val_acc"]) and summary.best_test_acc == best["test_acc"]
    assert torch.load(run.checkpoint_path("best"), weights_only=True)["epoch"] == best["epoch"]
    # recorded, stratified, never trained on
    val = run.read_val_indices()
    assert val is not None and len(val) == 40 and run.read_config()["train"]["data"]["val"] == 40
    from pipeline.manifest import read_arrays, read_manifest

    _, labels = read_arrays(prepared_dir, "train", read_manifest(prepared_dir))
    assert np.array_equal(val, stratified_split(labels[:200], 40, cfg.run.seed)[1])
    from training.components import Holdout, build_loaders
    from training.device import resolve_device
    from training.distributed import DistContext

    loaders = build_loaders(cfg, resolve_device("cpu"), DistContext(), Holdout(*stratified_split(labels[:200], 40, 0)))
    for epoch in range(3):
        loaders.train.set_epoch(epoch)
        assert len(np.intersect1d(loaders.train.order(), val)) == 0
    assert sorted(loaders.val.order()) == sorted(val)


def test_val_0_decides_on_the_test_set_as_the_original_did(prepared_dir, tmp_path, scheduler_inputs):
    cfg = tiny_config(prepared_dir, tmp_path / "noval", epochs=2)  # tiny_config sets --val 0
    result = run_train(cfg)
    rows = result.run.read_metrics()
    assert scheduler_inputs == pytest.approx([r["test_loss"] for r in rows], rel=1e-5)
    assert result.run.read_summary().decided_on == "test"
    assert all(np.isnan(r["val_acc"]) for r in rows) and result.run.read_val_indices() is None


def test_resume_with_a_validation_split_is_exact(prepared_dir, tmp_path):
    def cfg_for(path, epochs):
        cfg = tiny_config(prepared_dir, path, epochs=epochs)
        cfg.data.subset, cfg.data.val = 100, 20
        return cfg

    full = run_train(cfg_for(tmp_path / "full", 2))
    out = tmp_path / "resumed"
    run_train(cfg_for(out, 1))
    resumed = run_train(cfg_for(out, 2), resume=out, extra_epochs_to=2)
    assert metrics_without_timing(resumed.run) == metrics_without_timing(full.run)


def test_assignment_recipe_keeps_deciding_on_test():
    from common.config import TrainConfig, apply_recipe

    assert apply_recipe(TrainConfig(), "assignment").data.val == 0
    assert TrainConfig().data.val is None  # 5,000 (a tenth of a smaller --subset)
    # a run written before the validation split existed resumes as it was trained: on test
    from common.upgrade import upgrade_config

    old = TrainConfig().to_dict()
    del old["data"]["val"]
    assert TrainConfig.from_dict(upgrade_config({"train": old})["train"]).data.val == 0


def test_an_interrupted_multi_seed_compare_resumes(prepared_dir, tmp_path):
    from tests.test_compare import base_config, run_compare

    folder = tmp_path / "seeds"
    cfg = base_config(prepared_dir, epochs=1)

    def stop_at_second(message: str) -> None:
        if message.startswith("[2/2]") and "training" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_compare(["layer"], cfg, folder, log=stop_at_second, seeds=[0, 1])
    assert RunDir(folder / "layer-seed0").finished and not (folder / "layer-seed1" / "last.pt").exists()
    lines: list[str] = []
    result = run_compare(["layer"], cfg, folder, log=lines.append, seeds=[0, 1])
    assert result.reused == ["layer-seed0"] and result.trained == ["layer-seed1"]
    seeds = {RunDir(folder / k).train_config().run.seed for k in ("layer-seed0", "layer-seed1")}
    assert seeds == {0, 1}
