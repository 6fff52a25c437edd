"""The CUDA- and NCCL-only decisions, reached on a CPU-only machine.

Each test stands for a defect found by reading the GPU paths line by line (issue 12): the logic is
driven through a patched `torch.cuda` (or FFCV's ops, which build without a GPU), so a regression
shows up here, not on a user's H100.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import OptimConfig, TrainConfig
from common.errors import UserError
from training import device as device_mod
from training import distributed
from training.device import resolve_device


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as on a 2-GPU box with fp16-only GPUs (T4/V100: bf16 only by emulation)."""
    current = {"index": 0}
    calls: dict[str, list] = {"set_device": [], "set_rng_state": []}

    def set_device(index):
        calls["set_device"].append(index)
        current["index"] = index

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return including_emulation  # emulated only

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current["index"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake T4")
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: calls["set_rng_state"].append(i))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    return calls


# ---- device choice --------------------------------------------------------------------------------

def test_gpus_without_native_bf16_get_fp16_with_loss_scaling(fake_cuda):
    setup = resolve_device("cuda")
    assert setup.amp_dtype is torch.float16 and setup.use_scaler
    assert "fp16" in setup.describe() and "no native bf16" in setup.note


def test_cuda_n_sets_the_current_device_and_cudnn_benchmark(fake_cuda):
    setup = resolve_device("cuda:1")
    assert setup.device == torch.device("cuda", 1)
    assert fake_cuda["set_device"] == [1]  # FFCV's streams and events follow the current device
    assert torch.backends.cudnn.benchmark is True


def test_cuda_index_beyond_the_visible_gpus_is_one_sentence(fake_cuda):
    with pytest.raises(UserError, match="only 2 GPU"):
        resolve_device("cuda:5")


def test_auto_refuses_to_fall_back_to_cpu_when_a_gpu_is_present_but_unusable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "nvidia_device_present", lambda: True)
    with pytest.raises(UserError, match=r"driver >= 580.*--device cpu"):
        resolve_device("auto")
    assert resolve_device("cpu").device.type == "cpu"  # asking for the CPU is fine


def test_cpu_amp_is_bf16_only_with_native_support(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    assert resolve_device("cpu", amp=True).amp_dtype is torch.bfloat16
    assert resolve_device("cpu").amp_dtype is torch.bfloat16  # the default where it is native
    assert resolve_device("cpu", amp=False).amp_dtype is None
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    assert resolve_device("cpu").amp_dtype is None  # fp32 elsewhere, silently
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    setup = resolve_device("cpu", amp=True)
    assert setup.amp_dtype is None and "no native bf16" in setup.note


# ---- torchrun set-up ------------------------------------------------------------------------------

def test_backend_follows_the_requested_device_not_the_machine(fake_cuda):
    assert distributed.backend_for("cpu") == "gloo"  # --device cpu on a GPU box: gloo, no device_ids
    assert distributed.backend_for("auto") == "nccl"
    assert distributed.backend_for("cuda") == "nccl"


def test_explicit_gpu_index_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setattr(distributed, "_CONTEXT", None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="LOCAL_RANK"):
        distributed.context("cuda:1")
    assert distributed._CONTEXT is None  # nothing joined


def test_one_process_group_per_process(monkeypatch):
    monkeypatch.setattr(distributed, "_CONTEXT", None)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    first = distributed.context("cpu")
    assert distributed.context("cuda") is first  # compare's second run reuses the first's context


# ---- resume across machines -----------------------------------------------------------------------

def test_rng_state_with_more_gpus_than_here_restores_what_exists(fake_cuda):
    from training.state import rng_state, set_rng_state

    saved = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "cuda": [torch.zeros(16, dtype=torch.uint8) for _ in range(8)]}  # from an 8-GPU node
    set_rng_state(saved)
    assert fake_cuda["set_rng_state"] == [0, 1]
    assert "torch" in rng_state()


def test_fp16_scaler_resumes_from_a_bf16_or_cpu_checkpoint():
    from training.state import restore_scaler

    scaler = torch.amp.GradScaler("cpu", enabled=True)
    restore_scaler(scaler, {})  # a disabled scaler's (empty) state: start fresh instead of failing
    assert scaler.get_scale() == 65536.0
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    restore_scaler(disabled, scaler.state_dict())  # and the other way round: ignored


# ---- optimizer, workers, copies -------------------------------------------------------------------

def test_sgd_is_fused_on_cuda_only_and_scale_lr_multiplies_by_the_processes():
    from training.parts import build_optimizer, warmup_factor

    model = torch.nn.Linear(4, 2)
    optim = OptimConfig(lr=0.1, scale_lr=True, warmup_steps=4)
    assert build_optimizer(model, optim, torch.device("cpu"), world=4).defaults["lr"] == pytest.approx(0.4)
    assert not build_optimizer(model, optim, torch.device("cpu")).defaults.get("fused")
    fused = build_optimizer(model, optim, torch.device("cuda"))  # the flag only; the step needs a GPU
    assert fused.defaults["fused"] is True
    assert [warmup_factor(optim, t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_loader_threads_follow_cpu_affinity_and_are_capped_on_cuda(monkeypatch):
    import pipeline.loader
    from training.distributed import DistContext
    from training.parts import MAX_CUDA_WORKERS, loader_workers

    monkeypatch.setattr(pipeline.loader.os, "sched_getaffinity", lambda pid: set(range(3)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(None, torch.device("cpu"), DistContext()) == 3  # not os.cpu_count()
    monkeypatch.setattr(pipeline.loader.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert loader_workers(None, torch.device("cuda", 0), DistContext()) == MAX_CUDA_WORKERS
    assert loader_workers(None, torch.device("cpu"), DistContext(world=4)) == 16  # shared by 4 ranks
    assert loader_workers(5, torch.device("cpu"), DistContext()) == 5


def test_host_to_gpu_copy_is_blocking():
    """FFCV reuses pinned host buffers; a queued non-blocking copy could read the next batch."""
    from pipeline.loader import device_stage

    assert device_stage(torch.device("cpu")) == []
    (op,) = device_stage(torch.device("cuda", 0))
    assert op.non_blocking is False


def test_a_batch_of_one_label_keeps_its_batch_dimension(prepared_dir):
    """A test share of 33k + 1 images: the last batch holds one image (and hung CUDA runs)."""
    from pipeline.loader import make_loader
    from training.device import resolve_device
    from training.epoch import evaluate_loader

    loader = make_loader(prepared_dir, "test", 33, device="cpu", workers=1)  # 100 = 3 × 33 + 1
    shapes = [tuple(y.shape) for _, y in loader]
    assert shapes[-1] == (1,)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    loss, acc, labels, probs = evaluate_loader(model, loader, resolve_device("cpu"))
    assert len(labels) == 100 and probs.shape == (100, 10) and np.isfinite(loss)


# ---- config and run directory -----------------------------------------------------------------------

@pytest.mark.parametrize("field", ["lr", "momentum", "weight_decay", "label_smoothing", "plateau_threshold"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused(field, value):
    cfg = TrainConfig()
    setattr(cfg.optim, field, value)
    with pytest.raises(UserError, match="finite"):
        cfg.validate()


def test_best_is_a_hard_link_to_last_when_the_epoch_is_the_best(tmp_path):
    from common.rundir import RunDir

    run = RunDir(tmp_path / "r")
    run.create()
    run.save_checkpoint("last", {"model": {"w": torch.ones(3)}, "epoch": 1}, also_best=True)
    assert os.stat(run.checkpoint_path("last")).st_ino == os.stat(run.checkpoint_path("best")).st_ino
    run.save_checkpoint("last", {"model": {"w": torch.zeros(3)}, "epoch": 2})
    assert os.stat(run.checkpoint_path("last")).st_ino != os.stat(run.checkpoint_path("best")).st_ino
    assert run.load_checkpoint("best")["epoch"] == 1 and run.load_checkpoint("last")["epoch"] == 2
    assert not list(Path(run.path).glob(".*.tmp"))


def test_folder_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path):
    from common.lock import FolderLock

    folder = tmp_path / "run"
    folder.mkdir()
    with FolderLock(folder, "train"):
        with pytest.raises(UserError, match=rf"in use by another process \(pid {os.getpid()} on host "):
            FolderLock(folder, "train").acquire()
    # a lock file left by a process that died (its flock is gone, its text is not)
    (folder / ".lock").write_text('{"pid": 999999, "host": "gone", "purpose": "train", "since": "then"}\n')
    lock = FolderLock(folder, "train").acquire()
    assert lock.took_over is not None and "pid 999999 on host gone" in lock.took_over
    lock.release()


def test_lock_leaves_no_folder_behind_when_nothing_was_written(tmp_path):
    from common.lock import FolderLock

    with FolderLock(tmp_path / "new", "train"):
        pass
    assert not (tmp_path / "new").exists()
