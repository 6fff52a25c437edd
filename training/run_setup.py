"""Before the first step: which run directory, with which config, on which data, with what room.

A new run gets a fresh folder (refusing one that holds a started run); a resumed run trains with
its own config.json. Only the run-environment settings in `ENVIRONMENT` may be changed on resume
(a run started on a GPU can be finished on a CPU): they change how fast it trains, not what it
learns. Every such change is recorded in config.json's `resumes`.
"""

from __future__ import annotations

import platform
import shutil
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from torch import nn

from common.config import ENVIRONMENT, TrainConfig
from common.errors import UserError
from common.lock import FolderLock
from common.records import DataRecord
from common.rundir import RunDir
from pipeline.manifest import read_manifest, same_data, split_digests, verify_betons
from training.device import DeviceSetup
from training.distributed import DistContext


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


def _check_new_run_dir(run: RunDir) -> None:
    """A new run goes into a missing or empty folder, or one this project started without
    finishing an epoch (config.json of a run, no last.pt); anything else is someone's files."""
    if run.path.exists() and not run.path.is_dir():
        raise UserError(f"--run {run.path} is a file, not a folder; pass a new folder name for the run")
    if run.path.is_dir() and not run.is_project_run():
        found = sorted(p.name for p in run.path.iterdir())
        if found:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise UserError(f"--run {run.path} is a folder that holds files but no run of this project ({shown}); "
                            "pass a new or empty folder so nothing there is overwritten")
    if run.finished:
        raise UserError(f"{run.path} already holds a finished run; pass a new --run name "
                        f"(or --resume {run.path} to continue it with more --epochs)")
    if run.has_checkpoint("last"):
        raise UserError(f"{run.path} already holds a started run; continue it with "
                        f"`python cli.py train --resume {run.path}` or pass a new --run name")


def open_run(ctx: DistContext, cfg: TrainConfig, resume: str | Path | None, extra_epochs_to: int | None,
             overrides: dict[tuple[str, str], Any] | None = None) -> tuple[RunDir, TrainConfig, dict[str, Any] | None]:
    """The run directory and the config to train with: a resumed run's own config.json (its budget
    raised to `extra_epochs_to`, its environment settings replaced by `overrides`), or a new folder
    that must not hold a started run."""
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
        with FolderLock(run.path, "train"):  # a run still in its first epoch: the refusal names its holder
            pass
        raise UserError(f"--resume {run.path}: it has no last.pt checkpoint to continue from; "
                        "start a new run instead")
    saved = run.read_config()
    cfg = TrainConfig.from_dict(saved["train"])
    if extra_epochs_to is not None:
        cfg.optim.epochs = extra_epochs_to
    for (section, name), value in (overrides or {}).items():
        if (section, name) not in ENVIRONMENT:
            raise ValueError(f"{section}.{name} is not a run-environment setting")
        setattr(getattr(cfg, section), name, value)
    recorded = saved.get("data", {}).get("data_dir")
    if recorded and not Path(cfg.data.data_dir).is_dir():
        cfg.data.data_dir = recorded  # resumed from another working directory
    cfg.validate()
    return run, cfg, saved


def check_data(cfg: TrainConfig, run: RunDir, saved: dict[str, Any] | None) -> DataRecord:
    """The data record config.json keeps; refuses betons that changed since prepare, or (on resume)
    data other than the run was trained on."""
    manifest = read_manifest(cfg.data.data_dir)
    # A fraction of a second for both betons: catches one swapped in from another prepare, which FFCV
    # would read happily.
    changed = verify_betons(cfg.data.data_dir, manifest)
    if changed:
        raise UserError(f"{', '.join(s + '.beton' for s in changed)} in {cfg.data.data_dir}/ no longer matches its "
                        f"manifest.json (replaced or modified since prepare); rebuild the data with "
                        f"`python cli.py prepare --out {cfg.data.data_dir} --force`")
    record = DataRecord(data_dir=str(Path(cfg.data.data_dir).resolve()), source=manifest["source"],
                        official=manifest["official"], train_mean=manifest["train_mean"],
                        train_std=manifest["train_std"], classes=manifest["classes"],
                        sha256=split_digests(manifest))
    if saved is not None and not same_data(saved.get("data", {}).get("sha256"), manifest):
        raise UserError(f"the data in {cfg.data.data_dir}/ differs from the data {run.path} was trained on "
                        "(sha256 mismatch); resume with the original data or start a new run")
    return record


def checkpoint_bytes(model: nn.Module) -> int:
    """Weights + buffers + one SGD momentum buffer per parameter, plus pickle overhead."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return 2 * params + buffers + (1 << 20)


def check_free_space(run: RunDir, model: nn.Module) -> None:
    """Refuse to start when the run folder cannot hold its checkpoints safely.

    Peak use is three checkpoints: last.pt, best.pt (when it is an older epoch than last.pt) and
    the temp file of the one being replaced.
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


def new_run_id(ctx: DistContext) -> str:
    return str(ctx.broadcast(uuid.uuid4().hex))


def create_run(run: RunDir, cfg: TrainConfig, run_id: str, data: DataRecord, setup: DeviceSetup,
               ctx: DistContext, model: nn.Module, loader: str, val_indices: Any) -> None:
    check_free_space(run, model)
    run.create()
    if val_indices is not None:
        run.write_val_indices(val_indices)
    run.write_config({"run_id": run_id, "train": cfg.to_dict(), "data": data.to_dict(),
                      "versions": package_versions(), "device": setup.describe(), "precision": setup.precision,
                      "loader": loader,
                      "processes": ctx.world, "global_batch_size": ctx.world * cfg.optim.batch_size,
                      "created": datetime.now().isoformat(timespec="seconds"), "command": sys.argv})


def record_resume(run: RunDir, cfg: TrainConfig, setup: DeviceSetup, ctx: DistContext, at_epoch: int,
                  loader: str, saved_world: int | None = None) -> None:
    """Note in config.json what this process resumed with, when its environment differs.
    `saved_world`: the processes that wrote the checkpoint resumed from (None: not recorded there,
    taken to be config.json's). Under --scale-lr a change of processes rescaled the lr
    (training/state.py `rescale_lr`); the entry says by how much."""
    config = run.read_config()
    old = TrainConfig.from_dict(config["train"])
    changed = {f"{s}.{n}": [getattr(getattr(old, s), n), getattr(getattr(cfg, s), n)] for s, n in ENVIRONMENT
               if getattr(getattr(old, s), n) != getattr(getattr(cfg, s), n)}
    device = setup.describe()
    if device != config.get("device"):
        changed["device"] = [config.get("device"), device]
    before = saved_world if saved_world is not None else int(config.get("processes", 1))
    if ctx.world != before:
        changed["processes"] = [before, ctx.world]
    if loader != config["loader"]:
        changed["loader"] = [config["loader"], loader]
    if not changed and cfg.optim.epochs == old.optim.epochs:
        return
    resumes = list(config.get("resumes", []))
    entry: dict[str, Any] = {"at_epoch": at_epoch, "epochs": cfg.optim.epochs, "changed": changed,
                             "when": datetime.now().isoformat(timespec="seconds")}
    if cfg.optim.scale_lr and ctx.world != before:
        entry["lr_rescaled_by"] = ctx.world / before
    resumes.append(entry)
    config["resumes"] = resumes
    config["device"], config["precision"], config["loader"] = device, setup.precision, loader
    config["processes"], config["global_batch_size"] = ctx.world, ctx.world * cfg.optim.batch_size
    for section, name in ENVIRONMENT:
        config["train"][section][name] = getattr(getattr(cfg, section), name)
    config["train"]["optim"]["epochs"] = cfg.optim.epochs
    run.write_config(config)
