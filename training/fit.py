"""The training loop: SGD + ReduceLROnPlateau on test loss, writing a run directory.

Exact resume: the loader's shuffle order and augmentation are pure functions of (seed, epoch,
index), and a checkpoint holds model, optimizer, scheduler, scaler and torch RNG state at an epoch
boundary, so a run resumed from `last.pt` on the CPU produces the same metrics (apart from the
timing columns) as one that was never interrupted.
"""

from __future__ import annotations

import math
import platform
import random
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import OptimConfig, TrainConfig
from common.errors import UserError
from common.rundir import RunDir
from models import build_model
from pipeline.manifest import read_manifest
from training.device import DeviceSetup, resolve_device


class Diverged(UserError):
    pass


class Interrupted(UserError):
    exit_code = 130


@dataclass
class TrainResult:
    run: RunDir
    best_acc: float
    best_epoch: int
    epochs_done: int
    seconds: float


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.model.norm}"


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "ffcv", "numba", "numpy", "grad-cam"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_new_run_dir(run: RunDir) -> None:
    if run.finished:
        raise UserError(f"{run.path} already holds a finished run; pass a new --run name "
                        f"(or --resume {run.path} to continue it with more --epochs)")
    if run.has_checkpoint("last"):
        raise UserError(f"{run.path} already holds a started run; continue it with "
                        f"`python cli.py train --resume {run.path}` or pass a new --run name")


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


class _Stopper:
    """SIGTERM behaves like Ctrl-C: stop at once, keep the last epoch's checkpoint."""

    def __enter__(self) -> "_Stopper":
        self.previous = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum,
                           weight_decay=optim.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Stepped once per epoch with the test loss (relative threshold, as torch's default mode)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience,
        threshold=optim.plateau_threshold)


def evaluate_loader(model: nn.Module, loader: Any, setup: DeviceSetup) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Mean cross-entropy (no smoothing), accuracy, labels and softmax probabilities, in order."""
    model.eval()
    loss_sum = torch.zeros((), device=setup.device, dtype=torch.float64)
    probs, labels = [], []
    with torch.no_grad(), setup.autocast():
        for x, y in loader:
            if setup.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            elif not x.is_contiguous():
                x = x.contiguous()
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            probs.append(torch.softmax(logits, 1).cpu())
            labels.append(y.cpu())
    p = torch.cat(probs).numpy()
    t = torch.cat(labels).numpy()
    n = max(len(t), 1)
    return float(loss_sum.item() / n), float((p.argmax(1) == t).mean()), t, p


def train(cfg: TrainConfig, resume: str | Path | None = None, extra_epochs_to: int | None = None,
          log: Callable[[str], None] = print, progress: bool = True) -> TrainResult:
    """Train (or resume) one run. `extra_epochs_to` raises a resumed run's epoch budget."""
    from tqdm import tqdm

    from pipeline.loader import make_loader
    from training.curves import plot_curves

    if resume is not None:
        run = RunDir(resume)
        if not run.path.is_dir():
            raise UserError(f"--resume {run.path}: no such run directory")
        if not run.has_checkpoint("last"):
            raise UserError(f"--resume {run.path}: it has no last.pt checkpoint to continue from; "
                            "start a new run instead")
        saved = run.read_config()
        cfg = TrainConfig.from_dict(saved["train"])
        if extra_epochs_to is not None:
            cfg.optim.epochs = extra_epochs_to
        recorded = saved.get("data", {}).get("data_dir")
        if recorded and not Path(cfg.data.data_dir).is_dir():
            cfg.data.data_dir = recorded  # resumed from another working directory
        cfg.validate()
    else:
        cfg.validate()
        run = RunDir(cfg.run.run_dir or default_run_dir(cfg))
        cfg.run.run_dir = str(run.path)
        _check_new_run_dir(run)

    setup = resolve_device(cfg.run.device, cfg.run.amp, cfg.run.channels_last)
    manifest = read_manifest(cfg.data.data_dir)
    data_record = {
        "data_dir": str(Path(cfg.data.data_dir).resolve()),
        "source": manifest["source"], "official": manifest["official"],
        "train_mean": manifest["train_mean"], "train_std": manifest["train_std"],
        "classes": manifest["classes"],
        "sha256": {s: manifest["splits"][s]["sha256"] for s in ("train", "test")},
    }
    if resume is not None and saved.get("data", {}).get("sha256") != data_record["sha256"]:
        raise UserError(f"the data in {cfg.data.data_dir}/ differs from the data {run.path} was trained on "
                        "(sha256 mismatch); resume with the original data or start a new run")

    seed_everything(cfg.run.seed)
    model = build_model(cfg.model).to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.use_scaler)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)

    start_epoch, best_acc, best_epoch, wall_before = 0, -1.0, 0, 0.0
    rows: list[dict[str, float]] = []
    if resume is not None:
        state = run.load_checkpoint("last")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError):
            raise UserError(f"{run.checkpoint_path('last')} does not match this run's config; "
                            "the run directory mixes files from different runs") from None
        _set_rng_state(state["rng"])
        start_epoch, best_acc, best_epoch = state["epoch"], state["best_acc"], state["best_epoch"]
        wall_before = float(state.get("wall_seconds", 0.0))
        rows = [r for r in run.read_metrics() if r["epoch"] <= start_epoch]
        if start_epoch >= cfg.optim.epochs:
            raise UserError(f"{run.path} already finished {start_epoch} of {cfg.optim.epochs} epochs; "
                            f"pass --epochs N (N > {start_epoch}) to train further")
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config({"train": cfg.to_dict(), "data": data_record, "versions": package_versions(),
                          "device": setup.describe(), "created": datetime.now().isoformat(timespec="seconds"),
                          "command": sys.argv})

    train_loader = make_loader(cfg.data.data_dir, "train", cfg.optim.batch_size, cfg.augment,
                               seed=cfg.run.seed, device=setup.device, workers=cfg.data.workers,
                               subset=cfg.data.subset, copy=False)
    test_loader = make_loader(cfg.data.data_dir, "test", 500, seed=cfg.run.seed, device=setup.device,
                              workers=cfg.data.workers, subset=cfg.data.test_subset, copy=False)
    train_loader.set_epoch(start_epoch)
    step_model: nn.Module = torch.compile(model) if cfg.run.compile else model

    steps = len(train_loader) if cfg.optim.max_steps is None else min(len(train_loader), cfg.optim.max_steps)
    log(f"run {run.path}: ResNet-18 ({cfg.model.norm} norm) on {setup.describe()}; "
        f"{train_loader.info.count:,} train / {test_loader.info.count:,} test images, {steps} steps/epoch of {cfg.optim.batch_size}, "
        f"epochs {start_epoch + 1}-{cfg.optim.epochs}")
    run.write_summary({**run.read_summary(), "status": "running"})
    t_run = time.perf_counter()
    on_gpu = setup.device.type == "cuda"
    epoch = start_epoch
    try:
        with _Stopper():
            for epoch in range(start_epoch, cfg.optim.epochs):
                lr = optimizer.param_groups[0]["lr"]
                t0 = time.perf_counter()
                step_model.train()
                loss_sum = torch.zeros((), device=setup.device, dtype=torch.float64)
                correct = torch.zeros((), device=setup.device, dtype=torch.int64)
                seen = 0
                bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="step",
                           leave=False, disable=not progress, dynamic_ncols=True)
                for step, (x, y) in enumerate(train_loader):
                    if step >= steps:
                        break
                    if setup.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    elif not x.is_contiguous():
                        x = x.contiguous()
                    with setup.autocast():
                        logits = step_model(x)
                        loss = criterion(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    loss_sum += loss.detach().double() * len(y)
                    correct += (logits.detach().argmax(1) == y).sum()
                    seen += len(y)
                    # Syncing with the GPU every step would stall it, so there the loss is read
                    # every 20 steps; on the CPU reading it is free, so every step is checked.
                    if not on_gpu or step % 20 == 0 or step == steps - 1:
                        mean_loss = loss_sum.item() / seen
                        if not math.isfinite(mean_loss):
                            run.write_summary({**run.read_summary(), "status": "diverged"})
                            raise Diverged(
                                f"training diverged: the loss became {mean_loss} in epoch {epoch + 1} by step "
                                f"{step + 1}; the last good checkpoint is {run.checkpoint_path('last')} "
                                f"(if any); lower --lr and start a new run")
                        elapsed = time.perf_counter() - t0
                        bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{100 * correct.item() / seen:.1f}%",
                                        img_s=f"{seen / max(elapsed, 1e-9):,.0f}")
                    bar.update(1)
                bar.close()
                train_seconds = time.perf_counter() - t0
                test_loss, test_acc, labels, probs = evaluate_loader(step_model, test_loader, setup)
                scheduler.step(test_loss)
                seconds = time.perf_counter() - t0
                row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
                       "test_loss": test_loss, "test_acc": test_acc, "lr": lr, "seconds": seconds,
                       "img_per_s": seen / train_seconds}
                rows.append(row)
                improved = test_acc > best_acc
                if improved:
                    best_acc, best_epoch = test_acc, epoch + 1
                wall = wall_before + time.perf_counter() - t_run
                state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                         "rng": _rng_state(), "epoch": epoch + 1, "best_acc": best_acc,
                         "best_epoch": best_epoch, "wall_seconds": wall}
                # Order matters for crash safety: predictions and best first, last.pt (the resume
                # point) next, metrics after it; resume trims metrics to last.pt's epoch.
                run.write_predictions("last", labels, probs)
                if improved:
                    run.save_checkpoint("best", state)
                    run.write_predictions("best", labels, probs)
                run.save_checkpoint("last", state)
                run.write_metrics(rows)
                plot_curves(rows, run.curves_path, title=f"ResNet-18 ({cfg.model.norm} norm), {run.path.name}")
                run.write_summary({"status": "running", "epochs_done": epoch + 1, "epochs": cfg.optim.epochs,
                                   "best_acc": best_acc, "best_epoch": best_epoch, "wall_seconds": wall})
                log(f"epoch {epoch + 1:>3}/{cfg.optim.epochs}  train loss {row['train_loss']:.4f} "
                    f"acc {100 * row['train_acc']:5.2f}%  test loss {test_loss:.4f} acc {100 * test_acc:5.2f}%  "
                    f"lr {lr:.2g}  {seconds:.1f} s  {row['img_per_s']:,.0f} img/s" + ("  *best" if improved else ""))
    except KeyboardInterrupt:
        done = rows[-1]["epoch"] if rows else start_epoch
        run.write_summary({**run.read_summary(), "status": "interrupted"})
        hint = (f"resume with `python cli.py train --resume {run.path}`" if run.has_checkpoint("last")
                else "no epoch finished, so there is nothing to resume")
        raise Interrupted(f"interrupted during epoch {done + 1}; kept the checkpoint of epoch {done}; {hint}") from None

    wall = wall_before + time.perf_counter() - t_run
    run.write_summary({"status": "finished", "epochs_done": cfg.optim.epochs, "epochs": cfg.optim.epochs,
                       "best_acc": best_acc, "best_epoch": best_epoch, "wall_seconds": wall})
    return TrainResult(run, best_acc, best_epoch, cfg.optim.epochs, wall)
