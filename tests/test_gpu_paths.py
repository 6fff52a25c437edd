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
    import common.hardware

    monkeypatch.setattr(common.hardware, "cpu_has_native_bf16", lambda: True)
    assert resolve_device("cpu", amp=True).amp_dtype is torch.bfloat16
    assert resolve_device("cpu").amp_dtype is torch.bfloat16  # the default where it is native
    assert resolve_device("cpu", amp=False).amp_dtype is None
    monkeypatch.setattr(common.hardware, "cpu_has_native_bf16", lambda: False)
    assert resolve_device("cpu").amp_dtype is None  # fp32 elsewhere, silently
    monkeypatch.setattr(common.hardware, "cpu_has_native_bf16", lambda: False)
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
    from training.components import build_optimizer, warmup_factor

    model = torch.nn.Linear(4, 2)
    optim = OptimConfig(lr=0.1, scale_lr=True, warmup_steps=4)
    assert build_optimizer(model, optim, torch.device("cpu"), world=4).defaults["lr"] == pytest.approx(0.4)
    assert not build_optimizer(model, optim, torch.device("cpu")).defaults.get("fused")
    fused = build_optimizer(model, optim, torch.device("cuda"))  # the flag only; the step needs a GPU
    assert fused.defaults["fused"] is True
    assert [warmup_factor(optim, t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_loader_threads_follow_cpu_affinity_and_are_capped_on_cuda(monkeypatch):
    import pipeline.loaders
    from training.components import MAX_CUDA_WORKERS, loader_workers
    from training.distributed import DistContext

    monkeypatch.setattr(pipeline.loaders.os, "sched_getaffinity", lambda pid: set(range(3)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(None, torch.device("cpu"), DistContext()) == (3, "")  # not os.cpu_count()
    assert loader_workers(8, torch.device("cpu"), DistContext()) == (3, "--workers 8 clamped to the 3 usable cores")
    monkeypatch.setattr(pipeline.loaders.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert loader_workers(None, torch.device("cuda", 0), DistContext()) == (MAX_CUDA_WORKERS, "")
    assert loader_workers(None, torch.device("cpu"), DistContext(world=4)) == (16, "")  # shared by 4 ranks
    assert loader_workers(5, torch.device("cpu"), DistContext()) == (5, "")


def test_host_to_gpu_copy_is_blocking():
    """FFCV reuses pinned host buffers; a queued non-blocking copy could read the next batch."""
    from pipeline.ffcv_loader import device_stage

    assert device_stage(torch.device("cpu")) == []
    (op,) = device_stage(torch.device("cuda", 0))
    assert op.non_blocking is False


def test_a_batch_of_one_label_keeps_its_batch_dimension(prepared_dir):
    """A test share of 33k + 1 images: the last batch holds one image (and hung CUDA runs)."""
    from pipeline.ffcv_loader import make_loader
    from training.device import resolve_device
    from training.epoch import evaluate_loader

    loader = make_loader(prepared_dir, "test", 33, device="cpu", workers=1)  # 100 = 3 × 33 + 1
    shapes = [tuple(y.shape) for _, y in loader]
    assert shapes[-1] == (1,)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    loss, acc, labels, probs, _ = evaluate_loader(model, loader, resolve_device("cpu"))
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


# ---- issue 23: resume across devices, layouts and process counts -------------------------------

def _conv_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))


def _parts(model: torch.nn.Module, optimizer: torch.optim.SGD, scheduler=None, world: int = 1,
           scale_lr: bool = False, scaler: torch.amp.GradScaler | None = None):
    from training.components import Parts

    scheduler = scheduler or torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    return Parts(bare=model, step=model, optimizer=optimizer, scheduler=scheduler,
                 scaler=scaler or torch.amp.GradScaler("cpu", enabled=False), criterion=torch.nn.CrossEntropyLoss(),
                 distributed=False, classes=10, world=world, scale_lr=scale_lr)


def _through_a_file(checkpoint: dict) -> dict:
    import io

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _sgd_steps(parts, batches, layout: torch.memory_format) -> None:
    for x, y in batches:
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(parts.criterion(parts.bare(x.contiguous(memory_format=layout)), y)).backward()
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        if not isinstance(parts.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            parts.scheduler.step()


def test_resume_in_the_other_memory_format_with_fused_sgd_matches_a_run_that_never_flipped():
    """A channels-last run resumed with --no-channels-last: the momentum buffers were saved
    channels-last. Fused SGD on the CPU then combined elements of different positions (wrong
    weights; on CUDA the step raises); they are re-laid like their parameters."""
    from training.state import TrainState

    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 6, 6), torch.randint(0, 10, (4,))) for _ in range(4)]
    cl = torch.channels_last

    def fused(model):
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, fused=True)

    first = _conv_net().to(memory_format=cl)
    reference = _parts(first, fused(first))
    _sgd_steps(reference, batches[:2], cl)
    saved = _through_a_file(TrainState(run_id="r").checkpoint(reference))
    _sgd_steps(reference, batches[2:], cl)  # the run that never flipped

    flipped = _conv_net()  # NCHW parameters this time
    resumed = _parts(flipped, fused(flipped))
    TrainState.restore(saved, resumed, [], "last.pt")
    for p in flipped.parameters():
        assert resumed.optimizer.state[p]["momentum_buffer"].stride() == p.stride()
    _sgd_steps(resumed, batches[2:], torch.contiguous_format)
    for name, weight in first.state_dict().items():
        torch.testing.assert_close(flipped.state_dict()[name], weight, rtol=1e-5, atol=1e-5, msg=name)


def test_a_cpu_checkpoint_resumed_on_an_fp16_gpu_keeps_the_fresh_optimizers_fused_flag(fake_cuda):
    """A CPU run (fused=None) resumed on a T4: the optimizer built there is fused, and GradScaler
    hands a fused optimizer the scale to unscale inside its step, which the unfused path asserts
    against. The checkpoint's flags are dropped for the fresh optimizer's."""
    from training.components import build_optimizer
    from training.state import TrainState

    setup = resolve_device("cuda")
    assert setup.use_scaler
    optim = OptimConfig(lr=0.1, decay_all=False)  # two param groups: decayed and undecayed
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 6, 6), torch.randint(0, 10, (4,))) for _ in range(2)]
    on_cpu = _conv_net()
    cpu_run = _parts(on_cpu, build_optimizer(on_cpu, optim, torch.device("cpu")))
    _sgd_steps(cpu_run, batches[:1], torch.channels_last)
    saved = _through_a_file(TrainState(run_id="r").checkpoint(cpu_run))
    assert all(not g["fused"] for g in saved["optimizer"]["param_groups"])

    model = _conv_net()  # stays on the CPU: only the optimizer's flags are the GPU's
    fresh = build_optimizer(model, optim, setup.device)
    # GradScaler's scaling-aware path, as the CUDA scaler takes it, run by the CPU's fused kernel
    gpu_run = _parts(model, fresh, scaler=torch.amp.GradScaler("cpu", enabled=True))
    TrainState.restore(saved, gpu_run, [], "last.pt")
    assert len(fresh.param_groups) == 2
    assert all(g["fused"] is True for g in fresh.param_groups)
    assert fresh.state[next(model.parameters())]["momentum_buffer"] is not None  # the momentum came along
    _sgd_steps(gpu_run, batches[1:], torch.channels_last)  # asserted before the fix


@pytest.mark.parametrize("schedule", ["onecycle", "plateau"])
def test_scale_lr_resume_under_another_number_of_processes_rescales_the_lr(schedule):
    """--scale-lr trains at K × --lr: a checkpoint of 2 processes resumed by 4 trains on at what a
    4-process run would have had at that step (the one-cycle factor, or a plateau reduction, kept)."""
    from training.components import build_optimizer
    from training.schedule import build_scheduler
    from training.state import TrainState

    optim = OptimConfig(lr=0.1, scale_lr=True, decay_all=False, schedule=schedule, plateau_patience=0)
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 6, 6), torch.randint(0, 10, (4,))) for _ in range(4)]

    def parts_for(world: int):
        model = _conv_net()
        optimizer = build_optimizer(model, optim, torch.device("cpu"), world)
        return _parts(model, optimizer, build_scheduler(optimizer, optim, steps_per_epoch=4), world, scale_lr=True)

    def train(parts, some):
        _sgd_steps(parts, some, torch.channels_last)
        if schedule == "plateau":
            for loss in (1.0, 2.0):  # no improvement with patience 0: one reduction by plateau_factor
                parts.scheduler.step(loss)

    two, four = parts_for(2), parts_for(4)
    train(two, batches[:3])
    train(four, batches[:3])
    saved = _through_a_file(TrainState(run_id="r").checkpoint(two))
    assert saved["world"] == 2
    resumed = parts_for(4)
    state = TrainState.restore(saved, resumed, [], "last.pt")
    assert state.saved_world == 2
    lrs = [g["lr"] for g in resumed.optimizer.param_groups]
    assert lrs == pytest.approx([2 * g["lr"] for g in two.optimizer.param_groups])
    assert lrs == pytest.approx([g["lr"] for g in four.optimizer.param_groups])
    if schedule == "onecycle":
        assert resumed.scheduler.base_lrs == pytest.approx([0.4, 0.4])
        assert [g["initial_lr"] for g in resumed.optimizer.param_groups] == pytest.approx([0.4, 0.4])
    _sgd_steps(resumed, batches[3:], torch.channels_last)
    _sgd_steps(four, batches[3:], torch.channels_last)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx(
        [g["lr"] for g in four.optimizer.param_groups])

    del saved["world"]  # a checkpoint from before the field: taken to be from this many processes
    older = parts_for(4)
    assert TrainState.restore(saved, older, [], "last.pt").saved_world is None
    assert [g["lr"] for g in older.optimizer.param_groups] == pytest.approx(
        [g["lr"] for g in two.optimizer.param_groups])


def test_the_lr_rescale_is_recorded_in_the_resumes_of_config_json(tmp_path):
    from common.rundir import RunDir
    from training.distributed import DistContext
    from training.run_setup import record_resume

    cfg = TrainConfig()
    cfg.optim.scale_lr = True
    setup = resolve_device("cpu")
    run = RunDir(tmp_path / "r")
    run.create()
    run.write_config({"train": cfg.to_dict(), "device": setup.describe(), "precision": setup.precision,
                      "loader": "ffcv", "processes": 2, "global_batch_size": 2 * cfg.optim.batch_size})
    record_resume(run, cfg, setup, DistContext(world=4), 3, "ffcv", saved_world=2)
    config = run.read_config()
    (entry,) = config["resumes"]
    assert entry["changed"]["processes"] == [2, 4] and entry["lr_rescaled_by"] == 2.0
    assert config["processes"] == 4 and config["global_batch_size"] == 4 * cfg.optim.batch_size
    cfg.optim.scale_lr = False  # without --scale-lr the lr stays: nothing to record but the processes
    record_resume(run, cfg, setup, DistContext(world=1), 5, "ffcv", saved_world=4)
    assert "lr_rescaled_by" not in run.read_config()["resumes"][-1]


# ---- issue 23: torchrun on a broken driver, DDP buffers, the CUDA memory format ---------------------

def test_torchrun_auto_refuses_to_fall_back_to_cpu_when_a_gpu_is_present_but_unusable(monkeypatch):
    from training.distributed import DistContext, device_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ranks = DistContext(rank=1, world=2, local_rank=1, backend="gloo")  # what `auto` got without CUDA
    monkeypatch.setattr(device_mod, "nvidia_device_present", lambda: True)
    with pytest.raises(UserError, match=r"driver >= 580.*--device cpu"):
        device_for(ranks, "auto")
    assert device_for(ranks, "cpu") == "cpu"  # asking for the CPU is fine
    monkeypatch.setattr(device_mod, "nvidia_device_present", lambda: False)
    assert device_for(ranks, "auto") == "cpu"  # no GPU at all: the CPU, as before


def test_ddp_does_not_broadcast_buffers_every_step(monkeypatch):
    """Rank 0's buffers reach the other ranks before each evaluation and before the digest instead."""
    import torch.nn.parallel

    from training.components import build_parts
    from training.distributed import DistContext

    built: dict = {}

    def ddp(module, **options):
        built.update(options)
        return module

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", ddp)
    cfg = TrainConfig()
    build_parts(cfg, resolve_device("cpu", amp=False), DistContext(world=2, backend="gloo"), steps_per_epoch=1)
    assert built == {"device_ids": None, "broadcast_buffers": False}


def test_the_end_of_run_digest_follows_a_buffer_broadcast(tmp_path):
    from common.rundir import RunDir
    from training.distributed import DistContext
    from training.saving import finish
    from training.state import TrainState

    calls: list[str] = []

    class TwoRanks(DistContext):
        def broadcast_buffers(self, model):
            calls.append("broadcast_buffers")

        def gather(self, obj):
            calls.append("gather")
            return [obj, obj]

        def broadcast(self, obj):
            return obj

    model = torch.nn.BatchNorm1d(3)
    run = RunDir(tmp_path / "r")
    run.create()
    finish(TwoRanks(world=2), run, TrainState(run_id="r"), _parts(model, torch.optim.SGD(model.parameters())),
           1, "test")
    assert calls == ["broadcast_buffers", "gather"]
    assert run.read_summary().weights_in_sync is True


def test_cuda_memory_format_default_follows_the_norm(fake_cuda):
    """CUDA group norm (layer and group) has no channels-last kernel: NCHW there, channels-last for
    batch norm; the CPU keeps channels-last for every norm; an explicit flag always wins."""
    assert [resolve_device("cuda", norm=n).channels_last for n in ("layer", "group", "batch")] == [False, False, True]
    assert resolve_device("cuda", channels_last=True, norm="layer").channels_last is True
    assert resolve_device("cuda", channels_last=False, norm="batch").channels_last is False
    assert all(resolve_device("cpu", norm=n).channels_last for n in ("layer", "group", "batch"))
    assert resolve_device("cuda").channels_last is True  # no model named: unchanged


def test_bench_gpu_says_whether_the_measured_format_agrees_with_the_default():
    from bench.gpu import format_decision

    rows = [{"norm": n, "format": f, "mode": m, "img_s": rate} for n, f, m, rate in [
        ("layer", "channels-last", "eager", 90.0), ("layer", "NCHW", "eager", 100.0),
        ("batch", "channels-last", "eager", 100.0), ("batch", "NCHW", "eager", 80.0),
        ("batch", "NCHW", "compile", 500.0)]]
    layer, batch = format_decision(rows, torch.device("cuda", 0))
    assert (layer["faster"], layer["default"], layer["default_holds"]) == ("NCHW", "NCHW", True)
    assert (batch["faster"], batch["default"], batch["default_holds"]) == ("channels-last", "channels-last", True)
    assert batch["channels_last_over_nchw"] == pytest.approx(1.25)
    (cpu_layer, _) = format_decision(rows, torch.device("cpu"))
    assert cpu_layer["default"] == "channels-last" and not cpu_layer["default_holds"]
