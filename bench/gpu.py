"""`bench gpu`: everything a GPU decision needs, in one command and one JSON file.

Every timed step is `train`'s own: parts built by training/components.py `build_parts` (its
`build_optimizer`: fused SGD on CUDA, decay groups; the one-cycle schedule; GradScaler; torch.compile
with `--compile`) and stepped as training/epoch.py steps them; the loader gets the trainer's worker
count (`loader_workers`).

1. the step fed by the real loader (FFCV where it imports, else the torch path) over the same step
   on tensors in memory, so the loader stall shows as a ratio (`loader_fed`);
2. per-epoch I/O (`epoch_io`): training/saving.py `save_epoch` into a temporary run folder with a
   real checkpoint of the parts timed in (1): the seconds the training thread is blocked (the CPU
   snapshot, `cpu_snapshot`) against the `BackgroundWriter`'s write, and the same checkpoint written
   synchronously (what every epoch blocked on before);
3. model-only train-step img/s, one row per norm × memory format × eager/compile at batch 128 in
   the device's default precision (bf16 autocast on CUDA) (`model_only`), and the two decisions they
   support, each a printed line: the per-norm memory-format default (`format_decision`; GroupNorm
   has no channels-last CUDA kernel and autocast runs it in fp32, so layer/group norm may pay a cast
   and an NHWC→NCHW copy) and whether `--compile` should be the CUDA default (`compile_decision`:
   compiled over eager at the format `train` uses for the norm, and whether the speed-up repays the
   compile warm-up within a default 40-epoch run);
4. the pinned-buffer race probe: while the GPU is kept busy after every batch, every label the
   loader hands out is checked against the labels of the indices its order says it drew (a
   reused host buffer overwritten before its copy ran would show up as wrong labels);
5. a short real run (`train`, default 2 epochs) on the prepared data: epoch seconds, test accuracy;
6. per-device memory (`device_memory`): `torch.cuda.max_memory_allocated(i)` / `memory_reserved(i)`
   for every visible device (an empty list on the CPU), read after everything above ran, plus the
   GPUs on which nvidia-smi lists this process (`gpu_processes`, None where it cannot tell). This is
   how one look settles whether FFCV's worker thread allocates on GPU 0 when it should not: in a
   single-process run only the device `bench gpu` ran on may be non-zero (so `--device cuda:1` with
   anything on GPU 0 is the stray context a rank > 0 would make); under torchrun each rank reports
   its own, and a rank > 0 with memory (or, in `gpu_processes`, a context) on GPU 0 shows it.
7. device name, torch, CUDA and driver versions.

On a CPU the same code runs with a small budget (`--steps`, `--subset`), which is how the suite
tests it. On a GPU machine that has no FFCV it still runs: the torch loader needs only torch.
Budget on one GPU: the grid's compiles dominate (one per norm × format; their seconds on an H200
are in docs/BENCHMARKS.md, "GPU"); `--no-compile` drops them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import NORMS, AugmentConfig, TrainConfig

Log = Callable[[str], None]
# What `compile_decision` weighs the compile warm-up against: a default run (40 epochs of 50,000).
DEFAULT_RUN_IMAGES = 40 * 50_000
# A compiled step must beat eager by more than this to become the default (run-to-run noise).
COMPILE_MARGIN = 1.03


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


def _parts_rate(batches: Iterable, setup: Any, warmup: int, steps: int, norm: str, compile: bool = False,
                batch_size: int = 128) -> tuple[float, Any]:
    """(img/s, parts) of `train`'s own step: parts from training/components.py `build_parts` (fused SGD
    on CUDA, the one-cycle schedule, GradScaler, torch.compile with `compile`), stepped as
    training/epoch.py `train_epoch` steps them, after `warmup` untimed steps (which also absorb
    compilation)."""
    from training.components import build_parts, warmup_factor
    from training.distributed import DistContext
    from training.epoch import _optimizer_step

    torch.manual_seed(0)
    cfg = TrainConfig()
    cfg.model.norm, cfg.run.compile, cfg.optim.batch_size = norm, compile, batch_size
    parts = build_parts(cfg, setup, DistContext(), steps_per_epoch=warmup + steps)
    parts.step.train()
    on_cuda = setup.device.type == "cuda"
    seen, start = 0, 0.0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            if on_cuda:
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        if i >= warmup + steps:
            break
        x = setup.batch(x.to(setup.device, non_blocking=True))
        y = y.to(setup.device, non_blocking=True)
        with setup.autocast():
            loss = parts.criterion(parts.step(x), y)
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        _optimizer_step(parts, warmup_factor(cfg.optim, i))
        if parts.per_step:
            parts.scheduler.step()  # type: ignore[call-arg]  # LambdaLR: no metric
        parts.update_ema()
        seen += len(y)
    if on_cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start), parts


def _fused(parts: Any) -> bool:
    return bool(parts.optimizer.defaults.get("fused"))


def _grid(setup: Any, norms: tuple[str, ...], batch_size: int, steps: int, warmup: int, modes: tuple[str, ...],
          log: Log) -> list[dict[str, Any]]:
    from bench.train import _synthetic

    rows = []
    for norm in norms:
        for channels_last in (True, False):
            fmt = "channels-last" if channels_last else "NCHW"
            variant = dataclasses.replace(setup, channels_last=channels_last)
            for mode in modes:
                t0 = time.perf_counter()
                rate, parts = _parts_rate(_synthetic(batch_size, setup.device), variant, warmup, steps, norm,
                                          compile=mode == "compile", batch_size=batch_size)
                total = time.perf_counter() - t0
                rows.append({"norm": norm, "format": fmt, "mode": mode, "img_s": rate, "seconds_incl_compile": total,
                             "warmup_s": max(0.0, total - steps * batch_size / rate), "fused_sgd": _fused(parts)})
                log(f"  model only  {norm:<6} {fmt:<13} {mode:<8} {rate:>10,.0f} img/s")
                del parts
    return rows


def format_decision(rows: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Per norm, the memory format the eager rows of the grid measure faster, beside the one
    `train` defaults to on this device (training/device.py `default_channels_last`): one look says
    whether the default holds. `decision` is the line `bench gpu` prints."""
    from training.device import default_channels_last

    decisions = []
    for norm in dict.fromkeys(row["norm"] for row in rows):
        rate = {row["format"]: row["img_s"] for row in rows if row["norm"] == norm and row["mode"] == "eager"}
        if set(rate) != {"channels-last", "NCHW"}:
            continue
        faster = max(rate, key=lambda fmt: rate[fmt])
        default = "channels-last" if default_channels_last(device, norm) else "NCHW"
        ratio = rate["channels-last"] / rate["NCHW"]
        verdict = (f"keep the {default} default" if faster == default else
                   f"switch {norm} norm to {faster} (training/device.py default_channels_last)")
        where = "" if device.type == "cuda" else " [CPU: decides the CPU default only]"
        decisions.append({"norm": norm, "faster": faster, "default": default, "default_holds": faster == default,
                          "channels_last_over_nchw": ratio,
                          "decision": f"format: channels-last {ratio:.2f}× NCHW for {norm} norm (eager) → "
                                      f"{verdict}{where}"})
    return decisions


def compile_decision(rows: list[dict[str, Any]], device: torch.device,
                     run_images: int = DEFAULT_RUN_IMAGES) -> list[dict[str, Any]]:
    """Per norm, compiled over eager at the memory format `train` uses for that norm on this device,
    and whether `--compile` pays as the default: faster by more than COMPILE_MARGIN and the seconds
    it saves over a default run (`run_images`) exceed its extra warm-up (compilation). Norms without
    both rows (`--no-compile`) are left out. `decision` is the line `bench gpu` prints."""
    from training.device import default_channels_last

    decisions = []
    for norm in dict.fromkeys(row["norm"] for row in rows):
        fmt = "channels-last" if default_channels_last(device, norm) else "NCHW"
        by_mode = {row["mode"]: row for row in rows if row["norm"] == norm and row["format"] == fmt}
        if set(by_mode) < {"eager", "compile"}:
            continue
        eager, compiled = by_mode["eager"], by_mode["compile"]
        speedup = compiled["img_s"] / eager["img_s"]
        compile_s = max(0.0, compiled.get("warmup_s", 0.0) - eager.get("warmup_s", 0.0))
        saved_s = run_images / eager["img_s"] - run_images / compiled["img_s"]
        pays = speedup > COMPILE_MARGIN and saved_s > compile_s
        verdict = "make --compile the CUDA default" if pays else "keep eager default"
        where = "" if device.type == "cuda" else " [CPU: the CUDA default needs a GPU's rows]"
        decisions.append({"norm": norm, "format": fmt, "compile_over_eager": speedup, "compile_s": compile_s,
                          "saved_per_run_s": saved_s, "pays": pays,
                          "decision": f"compile: {speedup:.2f}× eager for {norm} norm ({fmt}); saves {saved_s:,.0f} s "
                                      f"of a {run_images:,}-image run for {compile_s:,.0f} s of compiling → "
                                      f"{verdict}{where}"})
    return decisions


def epoch_io(parts: Any, log: Log) -> dict[str, Any]:
    """One epoch's save as `train` does it (training/saving.py `save_epoch`: a CPU snapshot of the
    checkpoint, then the files written by a `BackgroundWriter`) into a temporary run folder, with
    `parts`' real checkpoint; then the snapshot alone, and the checkpoint written synchronously
    from the live tensors (what blocked every epoch before the background writer)."""
    from common.rundir import RunDir
    from training.saving import BackgroundWriter, cpu_snapshot, save_epoch
    from training.state import TrainState

    def sync() -> None:
        if next(parts.bare.parameters()).is_cuda:
            torch.cuda.synchronize()

    folder = Path(tempfile.mkdtemp(prefix="bench-gpu-io-"))
    try:
        run = RunDir(folder)
        state = TrainState(run_id="bench-gpu")
        state.record({"epoch": 1, "train_loss": 0.0, "train_acc": 0.0, "test_acc": 0.0, "seconds": 0.0}, 0.0)
        writer = BackgroundWriter()
        sync()
        t0 = time.perf_counter()
        save_epoch(run, state, parts, None, True, 1, "test", writer)
        blocked = time.perf_counter() - t0
        writer.wait()
        background = time.perf_counter() - t0 - blocked
        sync()
        t0 = time.perf_counter()
        cpu_snapshot(state.checkpoint(parts))
        snapshot = time.perf_counter() - t0
        t0 = time.perf_counter()
        run.save_checkpoint("last", state.checkpoint(parts), also_best=True)
        sync_write = time.perf_counter() - t0
        size = run.checkpoint_path("last").stat().st_size
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = {"checkpoint_mb": size / 1e6, "blocked_s": blocked, "background_write_s": background,
           "snapshot_s": snapshot, "sync_write_s": sync_write}
    log(f"  training thread blocked {blocked:.3f} s (snapshot {snapshot:.3f} s) vs {background:.3f} s written in "
        f"the background; a synchronous write of the {size / 1e6:.0f} MB checkpoint blocks {sync_write:.3f} s")
    return out


def device_memory() -> list[dict[str, Any]]:
    """`max_memory_allocated` / `memory_reserved` of every visible CUDA device, in bytes (the
    caching allocator's own figures: reading them starts no CUDA context); [] without CUDA."""
    if not torch.cuda.is_available():
        return []
    return [{"device": i, "max_allocated_bytes": int(torch.cuda.max_memory_allocated(i)),
             "reserved_bytes": int(torch.cuda.memory_reserved(i))} for i in range(torch.cuda.device_count())]


def gpu_processes() -> list[dict[str, Any]] | None:
    """The GPUs (nvidia-smi index) on which nvidia-smi lists this process, with its MiB there: a CUDA
    context without any allocation shows here and not in `device_memory`. None without nvidia-smi;
    [] also where a container hides process ids from it."""
    smi = shutil.which("nvidia-smi")
    if not smi or not torch.cuda.is_available():
        return None
    try:
        gpus = subprocess.run([smi, "--query-gpu=index,uuid", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30, check=True).stdout
        apps = subprocess.run([smi, "--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    index = {u.strip(): int(i) for i, u in (line.split(",", 1) for line in gpus.strip().splitlines() if "," in line)}
    mine = []
    for line in apps.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3 and fields[0] == str(os.getpid()):
            mine.append({"gpu": index.get(fields[1]), "used_mib": float(fields[2]) if fields[2].isdigit() else None})
    return mine


def _loader_fed(setup: Any, data_dir: Path, kind: str, batch_size: int, steps: int, warmup: int,
                log: Log) -> dict[str, Any]:
    from bench.train import _repeat
    from pipeline.loaders import open_loader
    from training.components import loader_workers
    from training.distributed import DistContext

    workers, _ = loader_workers(None, setup.device, DistContext())  # the trainer's count (capped on CUDA)
    loader = open_loader(kind, data_dir, "train", batch_size, AugmentConfig(), device=setup.device,
                         workers=workers, copy=False)
    rate, _ = _parts_rate(_repeat(loader), setup, warmup, steps, "layer", batch_size=batch_size)
    fmt = "channels-last" if setup.channels_last else "NCHW"
    log(f"  fed by the {kind} loader ({workers} workers; layer, {fmt}, eager): {rate:,.0f} img/s")
    return {"loader": kind, "img_s": rate, "workers": workers}


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
    from training.device import default_channels_last, resolve_device

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
    # The step `train` runs for the default (layer) norm: its memory format on this device.
    layer_setup = dataclasses.replace(setup, channels_last=default_channels_last(setup.device, "layer"))
    # The loader-fed step is timed first, as in `bench train`: on the 2-core CPU box, timed after the
    # model grid in the same process it read 36 img/s against 106 when timed first (thread pools
    # left behind by earlier work compete); the grid itself is unaffected by the order.
    log("1. a train step fed by the loader, and the same step on tensors in memory:")
    from bench.train import _synthetic

    results["loader_fed"] = _loader_fed(layer_setup, data_dir, kind, batch_size, steps, warmup, log)
    base, parts = _parts_rate(_synthetic(batch_size, setup.device), layer_setup, warmup, steps, "layer",
                              batch_size=batch_size)
    fed = results["loader_fed"]
    fed["model_only_img_s"], fed["ratio"], fed["fused_sgd"] = base, fed["img_s"] / base, _fused(parts)
    log(f"  model only (layer, eager, {'fused' if fed['fused_sgd'] else 'unfused'} SGD): {base:,.0f} img/s; "
        f"loader-fed / model-only = {fed['ratio']:.2f}")
    log("2. per-epoch I/O (training/saving.py save_epoch), with this step's checkpoint:")
    results["epoch_io"] = epoch_io(parts, log)
    del parts
    log(f"3. model-only train step, {steps} steps of {batch_size} after {warmup} warm-up:")
    results["model_only"] = _grid(setup, norms, batch_size, steps, warmup, modes, log)
    results["format_decision"] = format_decision(results["model_only"], setup.device)
    results["compile_decision"] = compile_decision(results["model_only"], setup.device)
    for d in results["format_decision"] + results["compile_decision"]:
        log("  " + d["decision"])
    if not compile:
        log("  compile: not measured (--no-compile)")
    log("4. pinned-buffer race probe:")
    loader = open_loader(kind, data_dir, "train", batch_size, AugmentConfig(), device=setup.device, copy=False)
    _, labels = read_arrays(data_dir, "train", read_manifest(data_dir))
    probe = race_probe(loader, labels, batches=min(len(loader), 200 if on_cuda else 8))
    results["race_probe"] = probe
    log(f"  {probe['labels_checked']:,} labels checked over {probe['batches']} batches "
        f"({'GPU kept busy' if probe['gpu_delayed'] else 'no GPU: order check only'}): "
        f"{probe['wrong_labels']} wrong")
    log(f"5. a {epochs}-epoch run of `train`:")
    results["run"] = _short_run(data_dir, device, kind, epochs, batch_size, subset, test_subset, max_steps, log)
    results["device_memory"] = device_memory()
    results["gpu_processes"] = gpu_processes()
    log("6. memory per device: " + (", ".join(
        f"cuda:{m['device']} max allocated {m['max_allocated_bytes'] / 2**20:,.0f} MiB, reserved "
        f"{m['reserved_bytes'] / 2**20:,.0f} MiB" for m in results["device_memory"]) or "no CUDA device")
        + ("" if results["gpu_processes"] is None else
           f"; nvidia-smi lists this process on GPU(s) {[g['gpu'] for g in results['gpu_processes']]}"))
    return results
