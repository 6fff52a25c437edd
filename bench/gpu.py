"""`bench gpu`: everything a GPU decision needs, in one command and one JSON file.

1. model-only train-step img/s for each norm × memory format × eager/compile at batch 128 in the
   device's default precision (bf16 autocast on CUDA) — the numbers behind the per-norm
   channels-last default (GroupNorm has no channels-last CUDA kernel in torch 2.14 and autocast
   runs it in fp32, so each norm may pay a cast and an NHWC→NCHW copy);
2. the same step fed by the real loader (FFCV where it imports, else the torch path), so the
   loader stall shows as a ratio to (1);
3. a short real run (`train`, default 2 epochs) on the prepared data: epoch seconds, test accuracy;
4. the pinned-buffer race probe: while the GPU is kept busy after every batch, every label the
   loader hands out is checked against the labels of the indices its order says it drew (a
   reused host buffer overwritten before its copy ran would show up as wrong labels);
5. device name, torch, CUDA and driver versions.

On a CPU the same code runs with a small budget (`--steps`, `--subset`), which is how the suite
tests it. On a GPU machine that has no FFCV it still runs: the torch loader needs only torch.
Budget on one GPU: ~8 minutes with compile (6 compiles of ~30-60 s each dominate), ~2 without.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import NORMS, AugmentConfig, TrainConfig

Log = Callable[[str], None]


def _versions(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda}
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        smi = shutil.which("nvidia-smi")
        if smi:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    else:
        from bench.common import machine

        info["device"] = "CPU"
        info.update(machine())
    return info


def _grid(setup: Any, norms: tuple[str, ...], batch_size: int, steps: int, warmup: int, modes: tuple[str, ...],
          log: Log) -> list[dict[str, Any]]:
    from bench.train import _steps_rate, _synthetic
    from training.device import DeviceSetup

    rows = []
    for norm in norms:
        for channels_last in (True, False):
            fmt = "channels-last" if channels_last else "NCHW"
            variant = DeviceSetup(setup.device, setup.amp_dtype, channels_last, setup.use_scaler)
            for mode in modes:
                t0 = time.perf_counter()
                rate = _steps_rate(_synthetic(batch_size, setup.device), variant, warmup, steps, norm,
                                   compile=mode == "compile")
                rows.append({"norm": norm, "format": fmt, "mode": mode, "img_s": rate,
                             "seconds_incl_compile": time.perf_counter() - t0})
                log(f"  model only  {norm:<6} {fmt:<13} {mode:<8} {rate:>10,.0f} img/s")
    return rows


def format_decision(rows: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Per norm, the memory format the eager rows of the grid measure faster, beside the one
    `train` defaults to on this device (training/device.py `default_channels_last`): one look says
    whether the default holds."""
    from training.device import default_channels_last

    decisions = []
    for norm in dict.fromkeys(row["norm"] for row in rows):
        rate = {row["format"]: row["img_s"] for row in rows if row["norm"] == norm and row["mode"] == "eager"}
        if set(rate) != {"channels-last", "NCHW"}:
            continue
        faster = max(rate, key=lambda fmt: rate[fmt])
        default = "channels-last" if default_channels_last(device, norm) else "NCHW"
        decisions.append({"norm": norm, "faster": faster, "default": default, "default_holds": faster == default,
                          "channels_last_over_nchw": rate["channels-last"] / rate["NCHW"]})
    return decisions


def _loader_fed(setup: Any, data_dir: Path, kind: str, batch_size: int, steps: int, warmup: int,
                log: Log) -> dict[str, Any]:
    from bench.train import _repeat, _steps_rate
    from pipeline.loaders import open_loader

    loader = open_loader(kind, data_dir, "train", batch_size, AugmentConfig(), device=setup.device, copy=False)
    rate = _steps_rate(_repeat(loader), setup, warmup, steps, "layer")
    log(f"  fed by the {kind} loader (layer, channels-last, eager): {rate:,.0f} img/s")
    return {"loader": kind, "img_s": rate}


def race_probe(loader: Any, labels: np.ndarray, batches: int, busy_cycles: int = 50_000_000) -> dict[str, Any]:
    """Hand out `batches` batches while the GPU is busy after each one; count labels that are not
    those of the indices the loader's order says it drew."""
    order = loader.order()
    bs = loader.batch_size
    wrong = checked = 0
    on_cuda = loader.device.type == "cuda"
    for i, (_, y) in enumerate(loader):
        if i >= batches:
            break
        if on_cuda:
            torch.cuda._sleep(busy_cycles)  # keep the GPU busy: an unsafe copy would now lag behind
        want = torch.from_numpy(labels[order[i * bs:(i + 1) * bs]])
        got = y.cpu()
        wrong += int((got != want[:len(got)]).sum())
        checked += len(got)
    if on_cuda:
        torch.cuda.synchronize()
    return {"batches": min(batches, len(loader)), "labels_checked": checked, "wrong_labels": wrong,
            "gpu_delayed": on_cuda}


def _short_run(data_dir: Path, device: str, loader: str, epochs: int, batch_size: int, subset: int | None,
               test_subset: int | None, max_steps: int | None, log: Log) -> dict[str, Any]:
    from training.fit import train

    cfg = TrainConfig()
    cfg.data.data_dir, cfg.data.subset, cfg.data.test_subset, cfg.data.loader = str(data_dir), subset, test_subset, loader
    cfg.optim.epochs, cfg.optim.max_steps, cfg.optim.batch_size = epochs, max_steps, batch_size
    cfg.run.device = device
    folder = Path(tempfile.mkdtemp(prefix="bench-gpu-run-"))
    cfg.run.run_dir = str(folder / "run")
    try:
        result = train(cfg, log=lambda m: log("  " + m), progress=False)
        rows = result.run.read_metrics()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"epochs": [{"epoch": int(r["epoch"]), "seconds": r["seconds"], "img_s": r["img_per_s"],
                        "test_acc": r["test_acc"], "train_acc": r["train_acc"]} for r in rows]}


def bench_gpu(data_dir: str | Path = "data", steps: int | None = None, batch_size: int = 128, epochs: int = 2,
              compile: bool = True, norms: tuple[str, ...] = NORMS, subset: int | None = None,
              test_subset: int | None = None, max_steps: int | None = None, device: str = "auto",
              log: Log = print) -> dict[str, Any]:
    from bench.common import data_or_synthetic
    from pipeline.loaders import open_loader, resolve_loader
    from pipeline.manifest import read_arrays, read_manifest
    from training.device import resolve_device

    setup = resolve_device(device)
    on_cuda = setup.device.type == "cuda"
    steps = steps or (50 if on_cuda else 3)
    warmup = 5 if on_cuda else 1
    data_dir, what = data_or_synthetic(data_dir, log=log)
    kind, why = resolve_loader("auto", setup.device, data_dir)
    results: dict[str, Any] = {"benchmark": "gpu", "versions": _versions(setup.device), "setup": setup.describe(),
                               "data": what, "batch_size": batch_size, "steps": steps, "loader": kind,
                               "loader_reason": why}
    log(f"bench gpu on {setup.describe()}; {what}; loader {kind} ({why})")
    modes = ("eager", "compile") if compile else ("eager",)
    # The loader-fed step is timed first, as in `bench train`: on the 2-core CPU box, timed after the
    # model grid in the same process it read 36 img/s against 106 when timed first (thread pools
    # left behind by earlier work compete); the grid itself is unaffected by the order.
    log("1. a train step fed by the loader, and the same step on tensors in memory:")
    from bench.train import _steps_rate, _synthetic

    results["loader_fed"] = _loader_fed(setup, data_dir, kind, batch_size, steps, warmup, log)
    base = _steps_rate(_synthetic(batch_size, setup.device), setup, warmup, steps, "layer")
    fed = results["loader_fed"]
    fed["model_only_img_s"], fed["ratio"] = base, fed["img_s"] / base
    log(f"  model only (layer, channels-last, eager): {base:,.0f} img/s; loader-fed / model-only = {fed['ratio']:.2f}")
    log(f"2. model-only train step, {steps} steps of {batch_size} after {warmup} warm-up:")
    results["model_only"] = _grid(setup, norms, batch_size, steps, warmup, modes, log)
    results["format_decision"] = format_decision(results["model_only"], setup.device)
    for d in results["format_decision"]:
        log(f"  {d['norm']:<6} faster eager: {d['faster']} (channels-last / NCHW = {d['channels_last_over_nchw']:.2f}); "
            f"train's default here: {d['default']}" + ("" if d["default_holds"] else " (the measurement disagrees)"))
    log("3. pinned-buffer race probe:")
    loader = open_loader(kind, data_dir, "train", batch_size, AugmentConfig(), device=setup.device, copy=False)
    _, labels = read_arrays(data_dir, "train", read_manifest(data_dir))
    probe = race_probe(loader, labels, batches=min(len(loader), 200 if on_cuda else 8))
    results["race_probe"] = probe
    log(f"  {probe['labels_checked']:,} labels checked over {probe['batches']} batches "
        f"({'GPU kept busy' if probe['gpu_delayed'] else 'no GPU: order check only'}): "
        f"{probe['wrong_labels']} wrong")
    log(f"4. a {epochs}-epoch run of `train`:")
    results["run"] = _short_run(data_dir, device, kind, epochs, batch_size, subset, test_subset, max_steps, log)
    return results
