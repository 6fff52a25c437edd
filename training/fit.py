"""The training loop: SGD + ReduceLROnPlateau on test loss, writing a run directory.

Exact resume: the loader's shuffle order and augmentation are pure functions of (seed, epoch,
index), and a checkpoint holds model, optimizer, scheduler, scaler and RNG state, so a run resumed
from `last.pt` on the CPU produces the same metrics (apart from the timing columns) and the same
weights as one that was never interrupted. `last.pt` is written at every epoch end and, when
SIGINT/SIGTERM stops a run, at the step where it stopped (`partial`): the resumed run skips the
batches that epoch already consumed and carries on with the same running sums.

Faults and what survives them (docs/RELIABILITY.md has the full table):
- SIGINT / SIGTERM: stop at the next step boundary, save that state, exit 130 with the resume
  command; a second signal quits at once, keeping the previous checkpoint.
- SIGKILL / power loss: every file is written atomically, so `last.pt` is the previous one.
- NaN/inf loss: stop naming epoch and step; `last.pt` stays the last good epoch.
- full or read-only disk: checked before training; a failing write leaves the old file in place.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import random
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import OptimConfig, TrainConfig
from common.errors import UserError
from common.rundir import RunDir
from models import build_model
from pipeline.manifest import read_manifest, verify_betons
from training.device import DeviceSetup, resolve_device
from training.distributed import DistContext, device_for, from_environment, shutdown


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
    main: bool = True  # False on torchrun ranks other than 0, which print nothing


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
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


def checkpoint_bytes(model: nn.Module) -> int:
    """Weights + buffers + one SGD momentum buffer per parameter, plus pickle overhead."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return 2 * params + buffers + (1 << 20)


def check_free_space(run: RunDir, model: nn.Module) -> None:
    """Refuse to start when the run folder cannot hold its checkpoints safely.

    Peak use is three checkpoints: last.pt, best.pt and the temp file of the one being replaced.
    """
    need = 3 * checkpoint_bytes(model) - sum(run.checkpoint_path(w).stat().st_size
                                             for w in ("last", "best") if run.has_checkpoint(w))
    where = run.path.resolve()
    while not where.exists():  # a new run: measure the filesystem it will be created on
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise UserError(f"{run.path} has {free / 2**20:.0f} MB free but checkpoints need about "
                        f"{need / 2**20:.0f} MB more (last.pt, best.pt and a temp copy while one is "
                        "replaced); free some space or choose another --run location")


class _Stopper:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary, where the state is whole
    and can be saved; a second signal stops at once, keeping the last saved checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.requested: str | None = None

    def __enter__(self) -> _Stopper:
        self.previous: dict[int, Any] = {}
        for sig in self.SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        self.log(f"{self.requested}: saving the state at the end of this step "
                 "(send it again to quit at once)")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum,
                           weight_decay=optim.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Stepped once per epoch with the test loss (relative threshold, as torch's default mode)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience,
        threshold=optim.plateau_threshold)


class _StopDuringEval(Exception):
    pass


def evaluate_loader(model: nn.Module, loader: Any, setup: DeviceSetup, ctx: DistContext | None = None,
                    stopper: _Stopper | None = None) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Mean cross-entropy (no smoothing), accuracy, labels and softmax probabilities, in test order.

    Under torchrun each rank scores its shard and the shards are gathered (DistributedSampler pads
    the last shard with repeats; they are dropped by index).
    """
    ctx = ctx or DistContext()
    order = loader.order() if ctx.enabled else None
    model.eval()
    losses, probs, labels = [], [], []
    with torch.no_grad(), setup.autocast():
        for x, y in loader:
            if stopper is not None and stopper.requested and not ctx.enabled:
                raise _StopDuringEval
            logits = model(setup.batch(x)).float()
            losses.append(F.cross_entropy(logits, y, reduction="none").double().cpu())
            probs.append(torch.softmax(logits, 1).cpu())
            labels.append(y.cpu())
    loss = torch.cat(losses).numpy()
    p = torch.cat(probs).numpy()
    t = torch.cat(labels).numpy()
    if ctx.enabled:
        parts = ctx.gather((order[:len(t)], loss, t, p))
        idx = np.concatenate([part[0] for part in parts])
        _, first = np.unique(idx, return_index=True)  # sorted by test index, repeats dropped
        loss, t, p = (np.concatenate([part[i] for part in parts])[first] for i in (1, 2, 3))
    n = max(len(t), 1)
    return float(loss.sum() / n), float((p.argmax(1) == t).mean()), t, p


def _on_main(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """Run fn on rank 0 only; a UserError there (e.g. a full disk) stops every rank, not just 0."""
    result, error = None, None
    if ctx.main:
        try:
            result = fn()
        except UserError as exc:
            error = exc
    if ctx.enabled:
        message = ctx.broadcast(str(error) if error is not None else None)
        if message is not None and error is None:
            raise UserError(message)
    if error is not None:
        raise error
    return result


def train(cfg: TrainConfig, resume: str | Path | None = None, extra_epochs_to: int | None = None,
          log: Callable[[str], None] = print, progress: bool = True) -> TrainResult:
    """Train (or resume) one run; under torchrun, one rank of a DistributedDataParallel run.

    `extra_epochs_to` raises a resumed run's epoch budget.
    """
    ctx = from_environment()
    try:
        return _train(ctx, cfg, resume, extra_epochs_to, log if ctx.main else (lambda m: None),
                      progress and ctx.main)
    finally:
        shutdown(ctx)


def _open_run(ctx: DistContext, cfg: TrainConfig, resume: str | Path | None,
              extra_epochs_to: int | None) -> tuple[RunDir, TrainConfig, dict[str, Any] | None]:
    """The run directory and the config to train with: a resumed run's own config.json (its budget
    raised to `extra_epochs_to`), or a new folder that must not hold a started run."""
    if resume is None:
        cfg.validate()
        run = RunDir(ctx.broadcast(str(cfg.run.run_dir or default_run_dir(cfg))))
        cfg.run.run_dir = str(run.path)
        _check_new_run_dir(run)
        return run, cfg, None
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
    return run, cfg, saved


def _check_data(cfg: TrainConfig, run: RunDir, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The data record config.json keeps; refuses betons that changed since prepare, or (on resume)
    data other than the run was trained on."""
    manifest = read_manifest(cfg.data.data_dir)
    # ~0.4 s for both betons: catches one swapped in from another prepare, which FFCV would read happily.
    changed = verify_betons(cfg.data.data_dir, manifest)
    if changed:
        raise UserError(f"{', '.join(s + '.beton' for s in changed)} in {cfg.data.data_dir}/ no longer matches its "
                        f"manifest.json (replaced or modified since prepare); rebuild the data with "
                        f"`python cli.py prepare --out {cfg.data.data_dir} --force`")
    record = {
        "data_dir": str(Path(cfg.data.data_dir).resolve()),
        "source": manifest["source"], "official": manifest["official"],
        "train_mean": manifest["train_mean"], "train_std": manifest["train_std"],
        "classes": manifest["classes"],
        "sha256": {s: manifest["splits"][s]["sha256"] for s in ("train", "test")},
    }
    if saved is not None and saved.get("data", {}).get("sha256") != record["sha256"]:
        raise UserError(f"the data in {cfg.data.data_dir}/ differs from the data {run.path} was trained on "
                        "(sha256 mismatch); resume with the original data or start a new run")
    return record


def _train(ctx: DistContext, cfg: TrainConfig, resume: str | Path | None, extra_epochs_to: int | None,
           log: Callable[[str], None], progress: bool) -> TrainResult:
    from tqdm import tqdm

    from analysis.figures import curves_figure, save_figure
    from pipeline.loader import make_loader

    run, cfg, saved = _open_run(ctx, cfg, resume, extra_epochs_to)
    setup = resolve_device(device_for(ctx, cfg.run.device), cfg.run.amp, cfg.run.channels_last)
    data_record = _check_data(cfg, run, saved)

    seed_everything(cfg.run.seed)
    model = build_model(cfg.model).to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.use_scaler)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)

    start_epoch, best_acc, best_epoch, wall_before = 0, -1.0, 0, 0.0
    partial: dict[str, Any] | None = None
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
        partial = state.get("partial")
        if partial is not None and partial["world"] != ctx.world:
            raise UserError(f"{run.checkpoint_path('last')} was saved in the middle of epoch {start_epoch + 1} "
                            f"by {partial['world']} process(es); resume it with the same number of processes "
                            f"(now {ctx.world})")
        rows = [r for r in run.read_metrics() if r["epoch"] <= start_epoch]
        _on_main(ctx, lambda: check_free_space(run, model))
        if start_epoch >= cfg.optim.epochs:
            raise UserError(f"{run.path} already finished {start_epoch} of {cfg.optim.epochs} epochs; "
                            f"pass --epochs N (N > {start_epoch}) to train further")
        run_id = run.read_config().get("run_id")
        _on_main(ctx, run.remove_stale_temps)  # half-written files of a SIGKILLed predecessor
    else:
        run_id = ctx.broadcast(uuid.uuid4().hex)

        def create() -> None:
            check_free_space(run, model)
            run.create()
            run.write_config({"run_id": run_id, "train": cfg.to_dict(), "data": data_record,
                              "versions": package_versions(), "device": setup.describe(),
                              "processes": ctx.world, "global_batch_size": ctx.world * cfg.optim.batch_size,
                              "created": datetime.now().isoformat(timespec="seconds"), "command": sys.argv})

        _on_main(ctx, create)

    workers = cfg.data.workers
    if workers is None and ctx.enabled:  # K processes on one node share its cores
        workers = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world)))
    train_loader = make_loader(cfg.data.data_dir, "train", cfg.optim.batch_size, cfg.augment,
                               seed=cfg.run.seed, device=setup.device, workers=workers,
                               subset=cfg.data.subset, copy=False, distributed=ctx.enabled)
    test_loader = make_loader(cfg.data.data_dir, "test", 500, seed=cfg.run.seed, device=setup.device,
                              workers=workers, subset=cfg.data.test_subset, copy=False,
                              distributed=ctx.enabled)
    step_model: nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(model, device_ids=[setup.device.index] if ctx.backend == "nccl" else None)
    if cfg.run.compile:
        step_model = torch.compile(step_model)

    steps = len(train_loader) if cfg.optim.max_steps is None else min(len(train_loader), cfg.optim.max_steps)
    ranks = f" × {ctx.world} processes ({ctx.backend}, global batch {ctx.world * cfg.optim.batch_size})" \
        if ctx.enabled else ""
    log(f"run {run.path}: ResNet-18 ({cfg.model.norm} norm) on {setup.describe()}{ranks}; "
        f"{train_loader.info.count:,} train / {test_loader.info.count:,} test images, {steps} steps/epoch of "
        f"{cfg.optim.batch_size}, epochs {start_epoch + 1}-{cfg.optim.epochs}"
        + (f" (epoch {start_epoch + 1} from step {partial['step'] + 1})" if partial else ""))
    _on_main(ctx, lambda: run.update_summary(status="running"))
    t_run = time.perf_counter()
    on_gpu = setup.device.type == "cuda"
    # Syncing with the GPU every step would stall it, so there the loss (and, under torchrun, the
    # stop flag) is read every 20 steps; on the CPU reading it is free, so every step is checked.
    check_every = 20 if on_gpu else 1

    def snapshot(epoch_done: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"run_id": run_id, "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
                "epoch": epoch_done, "best_acc": best_acc, "best_epoch": best_epoch,
                "wall_seconds": wall_before + time.perf_counter() - t_run, "partial": extra}

    def stop(epoch: int, step_done: int, sums: list[float], seconds: float, signame: str) -> None:
        extra = {"epoch": epoch, "step": step_done, "loss_sum": sums[0], "correct": sums[1], "seen": sums[2],
                 "seconds": seconds, "world": ctx.world}

        def save() -> None:
            run.save_checkpoint("last", snapshot(epoch, extra))
            run.update_summary(status="interrupted", stopped_at={"epoch": epoch + 1, "step": step_done})

        _on_main(ctx, save)
        raise Interrupted(f"{signame}: stopped in epoch {epoch + 1} after step {step_done} of {steps} and saved "
                          f"that state to {run.checkpoint_path('last')}; resume with "
                          f"`python cli.py train --resume {run.path}`")

    try:
        with _Stopper(log) as stopper:
            for epoch in range(start_epoch, cfg.optim.epochs):
                lr = optimizer.param_groups[0]["lr"]
                t0 = time.perf_counter()
                skip = partial["step"] if partial else 0
                # Local running sums; under torchrun rank 0 carries the restored global sums.
                loss_sum = torch.zeros((), device=setup.device, dtype=torch.float64)
                correct = torch.zeros((), device=setup.device, dtype=torch.float64)
                seen = 0
                sums = [0.0, 0.0, 0.0]
                prior_seconds = 0.0
                if partial and ctx.main:
                    loss_sum += partial["loss_sum"]
                    correct += partial["correct"]
                    seen = int(partial["seen"])
                if partial:
                    sums = [partial["loss_sum"], partial["correct"], partial["seen"]]
                    prior_seconds = partial["seconds"]
                partial = None
                step_model.train()
                train_loader.set_epoch(epoch)
                bar = tqdm(total=steps, initial=skip, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="step",
                           leave=False, disable=not progress, dynamic_ncols=True)
                if skip < steps:
                    for step, (x, y) in enumerate(train_loader):
                        if step >= steps:
                            break
                        if step < skip:  # consumed before the interruption; same batches, same order
                            continue
                        x = setup.batch(x)
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
                        if step % check_every == 0 or step == steps - 1 or (stopper.requested and not ctx.enabled):
                            flag = 1.0 if stopper.requested else 0.0
                            *sums, flags = ctx.all_sum([loss_sum.item(), correct.item(), float(seen), flag])
                            mean_loss = sums[0] / max(sums[2], 1)
                            if not math.isfinite(mean_loss):
                                _on_main(ctx, lambda: run.update_summary(status="diverged"))
                                raise Diverged(
                                    f"training diverged: the loss became {mean_loss} in epoch {epoch + 1} by step "
                                    f"{step + 1}; the last good checkpoint is {run.checkpoint_path('last')} "
                                    f"(if any); lower --lr and start a new run")
                            if flags > 0:
                                stop(epoch, step + 1, sums, prior_seconds + time.perf_counter() - t0,
                                     stopper.requested or "SIGTERM")
                            elapsed = time.perf_counter() - t0
                            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{100 * sums[1] / max(sums[2], 1):.1f}%",
                                            img_s=f"{sums[2] / max(prior_seconds + elapsed, 1e-9):,.0f}")
                        bar.update(1)
                bar.close()
                train_seconds = prior_seconds + time.perf_counter() - t0
                try:
                    test_loss, test_acc, labels, probs = evaluate_loader(model if ctx.enabled else step_model,
                                                                         test_loader, setup, ctx, stopper)
                except _StopDuringEval:
                    stop(epoch, steps, sums, train_seconds, stopper.requested or "SIGTERM")
                scheduler.step(test_loss)
                seconds = prior_seconds + time.perf_counter() - t0
                row = {"epoch": epoch + 1, "train_loss": sums[0] / sums[2], "train_acc": sums[1] / sums[2],
                       "test_loss": test_loss, "test_acc": test_acc, "lr": lr, "seconds": seconds,
                       "img_per_s": sums[2] / max(train_seconds, 1e-9)}
                rows.append(row)
                improved = test_acc > best_acc
                if improved:
                    best_acc, best_epoch = test_acc, epoch + 1

                def save_epoch() -> None:
                    state = snapshot(epoch + 1)
                    # Order matters for crash safety: predictions and best first, last.pt (the
                    # resume point) next, metrics after it; resume trims metrics to last.pt's epoch.
                    run.write_predictions("last", labels, probs)
                    if improved:
                        run.save_checkpoint("best", state)
                        run.write_predictions("best", labels, probs)
                    run.save_checkpoint("last", state)
                    run.write_metrics(rows)
                    save_figure(curves_figure(rows, f"ResNet-18 ({cfg.model.norm} norm), {run.path.name}"),
                                run.curves_path)
                    run.write_summary({"status": "running", "epochs_done": epoch + 1, "epochs": cfg.optim.epochs,
                                       "best_acc": best_acc, "best_epoch": best_epoch,
                                       "wall_seconds": state["wall_seconds"]})

                _on_main(ctx, save_epoch)
                log(f"epoch {epoch + 1:>3}/{cfg.optim.epochs}  train loss {row['train_loss']:.4f} "
                    f"acc {100 * row['train_acc']:5.2f}%  test loss {test_loss:.4f} acc {100 * test_acc:5.2f}%  "
                    f"lr {lr:.2g}  {seconds:.1f} s  {row['img_per_s']:,.0f} img/s" + ("  *best" if improved else ""))
                if ctx.all_sum([1.0 if stopper.requested else 0.0])[0] > 0 and epoch + 1 < cfg.optim.epochs:
                    _on_main(ctx, lambda: run.update_summary(status="interrupted"))
                    raise Interrupted(f"{stopper.requested or 'SIGTERM'}: stopped after epoch {epoch + 1}, whose "
                                      f"checkpoint is saved; resume with `python cli.py train --resume {run.path}`")
    except KeyboardInterrupt:
        done = rows[-1]["epoch"] if rows else start_epoch
        _on_main(ctx, lambda: run.update_summary(status="interrupted"))
        hint = (f"resume with `python cli.py train --resume {run.path}`" if run.has_checkpoint("last")
                else "no epoch finished, so there is nothing to resume")
        raise Interrupted(f"interrupted during epoch {done + 1}; kept the checkpoint of epoch {done}; {hint}") from None
    except UserError as exc:
        if not isinstance(exc, (Diverged, Interrupted)):
            # e.g. the disk filled up mid-run: say so in summary.json if there is room for it
            try:
                _on_main(ctx, lambda: run.update_summary(status="failed", error=str(exc)))
            except UserError:
                pass
        raise

    wall = wall_before + time.perf_counter() - t_run
    if ctx.enabled:
        # DDP keeps replicas identical by construction; check it, so a silent desync cannot hide.
        digest = hashlib.sha256()
        for tensor in model.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digests = ctx.gather(digest.hexdigest()[:16])
        in_sync = all(d == digests[0] for d in digests)
    _on_main(ctx, lambda: run.write_summary({
        "status": "finished", "epochs_done": cfg.optim.epochs, "epochs": cfg.optim.epochs,
        "best_acc": best_acc, "best_epoch": best_epoch, "wall_seconds": wall,
        **({"processes": ctx.world, "weights_in_sync": in_sync, "weight_digests": digests} if ctx.enabled else {})}))
    if ctx.enabled and not in_sync:
        raise UserError(f"the {ctx.world} processes ended with different weights ({digests}); this is a bug, "
                        "please report it with the run's config.json")
    return TrainResult(run, best_acc, best_epoch, cfg.optim.epochs, wall, main=ctx.main)
