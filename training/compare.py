"""The normalisation study: one run per norm with identical settings and seed, then one figure.

The comparison folder is written first (compare.json, atomically) and each norm's run lives in a
subfolder, so an interrupted compare is resumed by running the same command again: finished runs
are kept, runs with a checkpoint continue from it (`train --resume` semantics, exact on the CPU),
runs that never finished an epoch start over.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from common import compare_folder
from common.config import NORMS, TrainConfig
from common.errors import UserError
from common.lock import FolderLock
from common.rundir import RunDir

# Settings that may differ between the first attempt and a resumed one without changing results.
_FREE = (("run", "run_dir"), ("model", "norm"), ("data", "workers"), ("data", "data_dir"))


def parse_norms(text: str) -> list[str]:
    norms = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in norms if n not in NORMS]
    if unknown or not norms:
        raise UserError(f"--norms: unknown normalisation {', '.join(map(repr, unknown)) or repr(text)}; "
                        f"give a comma-separated list of {', '.join(NORMS)} (e.g. --norms batch,group,layer)")
    if len(set(norms)) != len(norms):
        raise UserError(f"--norms lists a normalisation twice ({text}); give each once")
    return norms


def _comparable(train: dict[str, Any]) -> dict[str, Any]:
    train = copy.deepcopy(train)
    for section, key in _FREE:
        train.get(section, {}).pop(key, None)
    return train


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} → {b!r}")
    return out


def _finished_run(path: Path) -> tuple[str, RunDir]:
    run = RunDir(path)
    if not path.is_dir():
        raise UserError(f"--runs {path}: no such folder")
    if not run.config_path.is_file():
        raise UserError(f"--runs {path} is not a run directory (no config.json); pass folders written by "
                        "`python cli.py train`")
    if not run.finished:
        raise UserError(f"--runs {path} has not finished training (status "
                        f"{run.read_summary().status.value!r}); finish it with "
                        f"`python cli.py train --resume {path}` or leave it out")
    return run.train_config().model.norm, run


@dataclass
class CompareResult:
    folder: Path
    trained: list[str]
    reused: list[str]
    main: bool = True  # False on torchrun ranks other than 0: they train but write and print nothing
    comparison: Any = None  # filled in by the caller that writes the figure and table (analysis)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be a comma-separated list of integers (e.g. 0,1,2), got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds must list distinct non-negative integers (e.g. 0,1,2), got {text!r}")
    return seeds


def run_key(norm: str, seed: int, seeds: Sequence[int]) -> str:
    """The run's name in compare.json and its folder: <norm> with one seed (as before), else
    <norm>-seed<k>."""
    return norm if len(seeds) == 1 else f"{norm}-seed{seed}"


def compare(norms: Sequence[str] | None, base: TrainConfig, folder: str | Path | None = None,
            runs: Sequence[str | Path] = (), log: Callable[[str], None] = print,
            progress: bool = True, seeds: Sequence[int] | None = None) -> CompareResult:
    """Train (or reuse) one run per norm (and seed) into `folder`. Under torchrun every rank trains
    every run in one process group; rank 0 chooses the folder, holds its lock and writes compare.json."""
    from training.distributed import context
    from training.fit import train

    ctx = context(base.run.device)
    log = log if ctx.main else (lambda message: None)
    given = dict(_finished_run(Path(p)) for p in runs)
    if len(given) != len(runs):
        raise UserError("--runs holds two runs with the same normalisation; give one run per norm")
    norms = list(norms) if norms else list(given)
    if not norms:
        raise UserError("nothing to compare: give --norms (e.g. batch,group,layer) and/or --runs")
    extra = [n for n in given if n not in norms]
    if extra:
        raise UserError(f"--runs includes a {extra[0]} run but --norms is {','.join(norms)}; add {extra[0]} "
                        "to --norms or leave that run out")
    base.validate()
    seeds = list(seeds) if seeds else [base.run.seed]
    if len(seeds) > 1 and given:
        raise UserError("--runs reuses single runs; with several --seeds, let compare train every (norm, seed) pair")
    chosen = folder or Path("runs") / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    folder = Path(ctx.broadcast(str(chosen)))  # one folder for all ranks, even across a second boundary
    record = compare_folder.CompareRecord(
        norms=norms, runs={run_key(n, s, seeds): str(given[n].path.resolve()) if n in given else run_key(n, s, seeds)
                           for n in norms for s in seeds},
        train=_comparable(base.to_dict()),
        settings={"epochs": base.optim.epochs, "batch_size": base.optim.batch_size, "lr": base.optim.lr,
                  "seed": base.run.seed, "subset": base.data.subset, "test_subset": base.data.test_subset,
                  "recipe": base.recipe, "data": base.data.data_dir, "shortcut_norm": base.model.shortcut_norm,
                  "seeds": seeds, "val": base.data.val},
        created=datetime.now().isoformat(timespec="seconds"))
    with contextlib.ExitStack() as held:
        if ctx.main:
            _check_folder(folder, record, log)
            held.enter_context(FolderLock(folder, "compare"))
            compare_folder.write_compare(folder, record)
        ctx.barrier()
        trained, reused = [], []
        pairs = [(n, s) for n in norms for s in seeds]
        for i, (norm, seed) in enumerate(pairs, 1):
            key = run_key(norm, seed, seeds)
            where = f"[{i}/{len(pairs)}] {key}"
            if norm in given:
                log(f"{where}: reusing finished run {given[norm].path}")
                reused.append(key)
                continue
            run = RunDir(compare_folder.norm_dir(folder, key))
            if run.finished:
                log(f"{where}: already finished in {run.path}")
                reused.append(key)
                continue
            if run.has_checkpoint("last"):
                log(f"{where}: resuming {run.path}")
                train(base, resume=run.path, log=log, progress=progress, lock=False)
            else:
                cfg = TrainConfig.from_dict(base.to_dict())
                cfg.model.norm, cfg.run.seed = norm, seed
                cfg.run.run_dir = str(run.path)
                log(f"{where}: training {run.path}")
                train(cfg, log=log, progress=progress, lock=False)
            trained.append(key)
    return CompareResult(folder, trained, reused, main=ctx.main)


def _check_folder(folder: Path, record: compare_folder.CompareRecord, log: Callable[[str], None]) -> None:
    """A new or empty folder, or the same comparison to resume (its first-attempt time is kept)."""
    if compare_folder.is_compare_dir(folder):
        old = compare_folder.read_compare(folder)
        changed = _differences(old.train, record.train)
        if changed or old.norms != record.norms or old.runs != record.runs:
            detail = "; ".join(changed[:3]) or f"norms/runs {old.norms} → {record.norms}"
            raise UserError(f"{folder} already holds a comparison with other settings ({detail}); "
                            "repeat the original command to resume it, or pass a new --run folder")
        record.created = old.created or record.created
        log(f"resuming the comparison in {folder}")
    elif folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder} exists and is not a comparison folder; pass a new or empty --run folder")
