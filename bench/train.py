"""`bench train`: is the loader ever the bottleneck?

(a) the full train step fed by this loader, (b) the same step on synthetic tensors already in
memory (model-only, the ceiling), (c) a plain baseline: torchvision DataLoader, NCHW fp32, no AMP.
a/b near 1 means the loader keeps up. (b) is also timed in the other memory format, which is how
the CPU default (NCHW) was chosen, and with weight-standardized convs (`--weight-std`), whose
per-step cost is the ratio printed beside it.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import alternated_best, data_or_synthetic, machine, train_images
from common.config import AugmentConfig, ModelConfig
from models import build_model
from training.device import DeviceSetup, resolve_device


def _steps_rate(batches: Iterable, setup: DeviceSetup, warmup: int, steps: int, norm: str,
                compile: bool = False, weight_std: bool = False) -> float:
    """img/s of full train steps (forward, backward, SGD) after `warmup` untimed ones (which also
    absorb torch.compile's compilation when `compile`)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(norm=norm, weight_std=weight_std)).to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.use_scaler)
    model.train()
    seen, start = 0, 0.0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            if setup.device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        if i >= warmup + steps:
            break
        x, y = x.to(setup.device, non_blocking=True), y.to(setup.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last if setup.channels_last else torch.contiguous_format)
        with setup.autocast():
            loss = F.cross_entropy(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        seen += len(y)
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def _repeat(loader: Any) -> Iterable:
    while True:
        yield from loader


def _synthetic(batch_size: int, device: torch.device, side: int = 32) -> Iterable:
    x = torch.randn(batch_size, 3, side, side, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    while True:
        yield x, y


def bench_train(data_dir: str | Path = "data", batch_size: int = 128, steps: int | None = None,
                warmup: int = 2, device: str = "auto", norm: str = "layer", precisions: bool = True,
                epoch_images: int = 50_000, sides: tuple[int, ...] = (), log: Callable[[str], None] = print
                ) -> dict[str, Any]:
    from pipeline.ffcv_loader import make_loader

    setup = resolve_device(device, norm=norm)  # the memory format `train` would use for this norm
    steps = steps or (50 if setup.device.type == "cuda" else 6)
    data_dir, what = data_or_synthetic(data_dir, log=log)
    log(f"timing {steps} steps of {batch_size} (after {warmup} warm-up) on {setup.describe()}; {what}")
    loader = make_loader(data_dir, "train", batch_size, AugmentConfig(), seed=0, device=setup.device, copy=False)
    rate_a = _steps_rate(_repeat(loader), setup, warmup, steps, norm)
    log(f"(a) train step fed by the FFCV loader:          {rate_a:>9,.1f} img/s")
    rate_b = _steps_rate(_synthetic(batch_size, setup.device), setup, warmup, steps, norm)
    log(f"(b) same step, synthetic tensors in memory:     {rate_b:>9,.1f} img/s")
    other = DeviceSetup(setup.device, setup.amp_dtype, not setup.channels_last, setup.use_scaler)
    rate_b_other = _steps_rate(_synthetic(batch_size, setup.device), other, warmup, steps, norm)
    fmt = "channels-last" if other.channels_last else "NCHW"
    log(f"    (b) in {fmt} instead:                 {rate_b_other:>9,.1f} img/s")
    # Plain and weight-standardized steps alternated, best of two each: one row after another
    # drifted by up to 9% with the host's pace (docs/BENCHMARKS.md, "Weight Standardization").
    rate_plain, rate_b_ws = alternated_best(
        [functools.partial(_steps_rate, _synthetic(batch_size, setup.device), setup, warmup, steps, norm, weight_std=ws)
         for ws in (False, True)])
    log(f"    (b) with --weight-std convs:                {rate_b_ws:>9,.1f} img/s "
        f"({rate_b_ws / rate_plain:.2f}x of plain convs' {rate_plain:,.1f}, alternated, best of 2 each)")

    from torch.utils.data import DataLoader, TensorDataset
    from torchvision import transforms as T

    images, labels = train_images(data_dir)
    mean = torch.tensor(loader.info.mean).view(3, 1, 1) / 255
    std = torch.tensor(loader.info.std).view(3, 1, 1) / 255
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.RandomRotation(5),
                    T.Normalize(mean.flatten().tolist(), std.flatten().tolist()),
                    T.RandomErasing(p=0.5, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0)])

    class Augmented(TensorDataset):
        def __getitem__(self, i: int):
            x, y = super().__getitem__(i)
            return tf(x.permute(2, 0, 1).float() / 255), y

    n = min(len(labels), batch_size * (warmup + steps + 2))
    tv = DataLoader(Augmented(torch.from_numpy(images[:n]), torch.from_numpy(labels[:n])),
                    batch_size=batch_size, shuffle=True, num_workers=os.cpu_count() or 1, drop_last=True)
    plain = DeviceSetup(setup.device, None, False, False)
    rate_c = _steps_rate(_repeat(tv), plain, warmup, steps, norm)
    log(f"(c) baseline: torchvision DataLoader, NCHW fp32: {rate_c:>9,.1f} img/s")
    log(f"a/b = {rate_a / rate_b:.2f} (loader overhead {100 * (1 - rate_a / rate_b):.0f}%),  a/c = {rate_a / rate_c:.2f}x")
    precision = _precision_grid(setup, batch_size, warmup, steps, norm, epoch_images, log) if precisions else []
    by_side = _side_rates(setup, batch_size, warmup, steps, norm, sides, log) if sides else []
    allocators = _allocator_rates(setup, batch_size, warmup, steps, norm, log) if setup.device.type == "cpu" else {}
    return {"benchmark": "train", "device": setup.describe(), "data": what, "batch_size": batch_size,
            "allocators": allocators, "by_side": by_side, "steps": steps, "loader_img_s": rate_a, "model_only_img_s": rate_b,
            "model_only_other_format_img_s": rate_b_other, "other_format": fmt,
            "model_only_weight_std_img_s": rate_b_ws, "weight_std_ratio": rate_b_ws / rate_plain, "baseline_img_s": rate_c,
            "ratio": rate_a / rate_b, "ratio_vs_baseline": rate_a / rate_c, "precision_grid": precision,
            "machine": machine()}


def _allocator_rates(setup: DeviceSetup, batch_size: int, warmup: int, steps: int, norm: str,
                     log: Callable[[str], None]) -> dict[str, Any]:
    """Model-only steps of `--recipe fast`'s model in fresh processes on the C library's malloc and
    on tcmalloc (what `cli.py` re-executes itself with: common/allocator.py), alternated, best of
    two each, with the page faults and kernel time of each. {} where tcmalloc is not installed."""
    from common.allocator import DONE, preload_env

    system = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", DONE)}
    tcmalloc = preload_env(system)
    if tcmalloc is None:
        log("(f) allocator: tcmalloc is not installed here (scripts/setup.sh installs libtcmalloc-minimal4); not timed")
        return {}
    log("(f) allocator, model-only steps in fresh processes, alternated, best of 2:")
    names = ("system", "tcmalloc")
    rows = alternated_best([functools.partial(_isolated_rate, setup, setup.amp_dtype, batch_size, warmup, steps, norm,
                                               False, weight_std=True, env=env) for env in (system, tcmalloc)],
                            key=lambda row: row[0])
    best = dict(zip(names, rows))
    for name, (rate, _, faults, kernel_s) in best.items():
        log(f"    {name:<9} {rate:>8,.1f} img/s  {faults / (warmup + steps):>9,.0f} page faults/step  "
            f"{kernel_s:5.2f} s of CPU in the kernel")
    ratio = best["tcmalloc"][0] / best["system"][0]
    log(f"    tcmalloc against the C library's malloc: {ratio:.2f}x")
    return {name: {"img_s": r[0], "faults_per_step": r[2] / (warmup + steps), "kernel_s": r[3]}
            for name, r in best.items()} | {"ratio": ratio}


def parse_sides(text: str) -> tuple[int, ...]:
    """`--sides 24,16` → (24, 16); "" → (). Each side between 8 and 32 pixels."""
    from common.errors import UserError

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and 8 <= int(p) <= 32 for p in parts):
        raise UserError(f"--sides must be a comma-separated list of image sides from 8 to 32 (e.g. 24,16), got {text!r}")
    return tuple(int(p) for p in parts)


def _side_rates(setup: DeviceSetup, batch_size: int, warmup: int, steps: int, norm: str, sides: tuple[int, ...],
                log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Model-only steps of the weight-standardized model (`--recipe fast`'s) on images `side`
    pixels a side, against 32: what progressive resizing (--min-res) saves per image. A step has
    a part that does not shrink with the image, so the gain is below the area ratio. Each side is
    alternated with 32 and the best of two kept, as for --weight-std above."""
    rows: list[dict[str, Any]] = []
    log("(e) model-only steps by image side (weight-standardized convs), against 32 px, alternated, best of 2:")
    for side in sides:
        full, small = alternated_best(
            [functools.partial(_steps_rate, _synthetic(batch_size, setup.device, s), setup, warmup, steps, norm,
                               weight_std=True) for s in (32, side)])
        rows.append({"side": side, "img_s": small, "full_img_s": full, "ratio": small / full,
                     "area_ratio": (32 / side) ** 2})
        log(f"    {side:>3} px: {small:>8,.1f} img/s against {full:,.1f} at 32 px: {small / full:.2f}x "
            f"(the area alone would give {(32 / side) ** 2:.2f}x)")
    return rows


_ISOLATED = """
import json, sys, time
sys.path.insert(0, {root!r})
import resource
import torch
from bench.train import _steps_rate, _synthetic
from training.device import DeviceSetup
device = torch.device({device!r})
variant = DeviceSetup(device, {dtype}, {channels_last!r}, False)
t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
rate = _steps_rate(_synthetic({batch_size}, device), variant, {warmup}, {steps}, {norm!r}, compile={compiled!r},
                   weight_std={weight_std!r})
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps([rate, time.perf_counter() - t0, after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime]))
"""


def _isolated_rate(setup: DeviceSetup, dtype: torch.dtype | None, batch_size: int, warmup: int, steps: int,
                   norm: str, compiled: bool, weight_std: bool = False, env: dict[str, str] | None = None
                   ) -> tuple[float, float, int, float]:
    """(img/s; and over the warm-up and the steps: wall seconds, minor page faults, kernel CPU
    seconds) of one configuration in a fresh Python process (`env`: its environment, by default
    this process's).

    Measured here: in one process, everything timed after a torch.compile'd model (and, in `bench
    gpu`, after FFCV's threads had run) ran at ~37 img/s where a fresh process gives 100-105 fp32 and
    195 bf16 on the 2-core box: compile workers and other thread pools stay behind and compete.
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = _ISOLATED.format(root=str(Path(__file__).resolve().parents[1]), device=str(setup.device),
                            dtype="torch.bfloat16" if dtype is torch.bfloat16 else "None",
                            channels_last=setup.channels_last, batch_size=batch_size, warmup=warmup, steps=steps,
                            norm=norm, compiled=compiled, weight_std=weight_std)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, check=True,
                         env=env)
    rate, total, faults, kernel_s = json.loads(out.stdout.strip().splitlines()[-1])
    return float(rate), float(total), int(faults), float(kernel_s)


def _precision_grid(setup: DeviceSetup, batch_size: int, warmup: int, steps: int, norm: str, epoch_images: int,
                    log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Model-only steps in fp32 and bf16 (where the device has it natively), eager and compiled,
    in one run. Compiling costs its first steps; `epoch_s` adds that cost to one epoch of
    `epoch_images` at the steady rate, which is what decides whether --compile pays for itself."""
    from common.hardware import cpu_has_native_bf16

    dtypes: list[torch.dtype | None] = [None]
    if setup.device.type == "cuda" or cpu_has_native_bf16():
        dtypes.append(torch.bfloat16)
    rows: list[dict[str, Any]] = []
    log(f"(d) precision and compile, model only, {steps} steps after {warmup + 2} warm-up, each in a fresh process:")
    for dtype in dtypes:
        for compiled in (False, True):
            rate, total, _, _ = _isolated_rate(setup, dtype, batch_size, warmup + 2, steps, norm, compiled)
            first_steps = max(0.0, total - steps * batch_size / rate)  # warm-up wall time, compile included
            epoch_s = first_steps + epoch_images / rate
            precision = "fp32" if dtype is None else "bf16"
            rows.append({"precision": precision, "compile": compiled, "img_s": rate, "warmup_s": first_steps,
                         "epoch_s": epoch_s})
            log(f"    {precision:<5} {'compiled' if compiled else 'eager':<9} {rate:>8,.1f} img/s  "
                f"warm-up {first_steps:6.1f} s  one epoch of {epoch_images:,} ≈ {epoch_s / 60:5.1f} min")
    base = float(rows[0]["img_s"])
    for row in rows[1:]:
        row["speedup"] = float(row["img_s"]) / base
    log("    speed-up vs fp32 eager: " + ", ".join(f"{r['precision']} {'compiled' if r['compile'] else 'eager'} "
                                                 f"{r['speedup']:.2f}x" for r in rows[1:]))
    return rows
