"""`bench predict`: a folder of image files through `predict`, batched vs one image at a time.

(a) `analysis.model_use.predict.predict` on a folder of N PNG files (default 1,000): decode, crop/resize,
    one model pass per batch of 256 (channels-last), in one process, model already loaded;
(b) the baseline a first script would be: for each file, read it the same way, then one model
    call per image (batch 1, NCHW) — timed on the first `baseline` files only (it is the slow one);
(c) optionally the whole command from the shell, `python cli.py predict FOLDER --run RUN`, i.e.
    interpreter start, imports and model load included: what a user waits for.
The ratio printed is (a)'s images per second over (b)'s.

The images are test-set images (data/test.npz) when the data is prepared, else random pixels; the
run is the one given, else an untrained ResNet-18 in a temp folder (weights do not change speed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEAN = [125.3, 123.0, 113.9]  # CIFAR-10 train mean/std (0-255); only the synthetic run uses them
STD = [63.0, 62.1, 66.7]


def _images(data_dir: Path, n: int) -> tuple[np.ndarray, str]:
    from pipeline.manifest import TEST_ARRAYS, read_test_arrays

    if (data_dir / TEST_ARRAYS).is_file():
        images, _ = read_test_arrays(data_dir)
        reps = -(-n // len(images))
        return np.concatenate([images] * reps)[:n], f"test images from {data_dir}/{TEST_ARRAYS}"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "random pixels (no prepared data)"


def synthetic_run(folder: Path, norm: str = "layer") -> Path:
    """An untrained ResNet-18 as a run directory (config.json + best.pt), enough for predict/export."""
    import torch

    from common.config import TrainConfig
    from common.rundir import RunDir
    from models import build_model
    from pipeline.cifar_source import CLASSES

    run = RunDir(folder)
    run.create()
    cfg = TrainConfig()
    cfg.model.norm = norm
    run.write_config({"train": cfg.to_dict(), "data": {"data_dir": cfg.data.data_dir, "train_mean": MEAN,
                                                       "train_std": STD, "classes": list(CLASSES)}})
    torch.manual_seed(0)
    run.save_checkpoint("best", {"model": build_model(cfg.model).state_dict(), "epoch": 0})
    return folder


def bench_predict(run_dir: str | Path | None = None, data_dir: str | Path = "data", n: int = 1000,
                  baseline: int = 100, cli: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch
    from PIL import Image

    from analysis.loading import load_model, to_model_input
    from analysis.model_use.image_files import read_image
    from analysis.model_use.predict import BATCH, open_for_predict, predict
    from bench.common import machine

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp_name:
        tmp = Path(tmp_name)
        run_path = Path(run_dir) if run_dir is not None else synthetic_run(tmp / "run")
        what_run = str(run_dir) if run_dir is not None else "untrained ResNet-18 (synthetic run)"
        images, what = _images(Path(data_dir), n)
        folder = tmp / "images"
        folder.mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img).save(folder / f"{i:05d}.png")
        files = sorted(folder.glob("*.png"))
        log(f"{n:,} PNG files ({what}); run: {what_run}; torch threads {torch.get_num_threads()}")

        predict(files[:8], run_path, top_k=1)  # warm-up: lazy imports, first-call allocations
        load_before = os.getloadavg()[0]
        t, cpu = time.perf_counter(), time.process_time()
        result = predict([folder], run_path, top_k=1)
        batched_s, batched_cpu = time.perf_counter() - t, time.process_time() - cpu
        batched = n / batched_s
        log(f"(a) predict, batches of {BATCH}: {batched_s:.2f} s for {n:,} files = {batched:.0f} img/s "
            f"(reading {result.timings['read']:.2f} s, model {result.timings['model']:.2f} s; "
            f"{batched_cpu:.1f} CPU-seconds over all threads; load average {load_before:.1f} on "
            f"{os.cpu_count()} cores: above the core count, other work was taking a share)")

        inputs = open_for_predict(run_path, "best")
        model = load_model(inputs)
        count = min(baseline, n)
        with torch.no_grad():
            model(to_model_input(read_image(files[0])[0][None], inputs.mean, inputs.std))  # warm-up
            t = time.perf_counter()
            for path in files[:count]:
                pixels, _ = read_image(path)
                model(to_model_input(pixels[None], inputs.mean, inputs.std)).softmax(1)
            single_s = time.perf_counter() - t
        single = count / single_s
        log(f"(b) one image at a time (first {count:,} files): {single_s:.2f} s = {single:.0f} img/s")

        out: dict[str, Any] = {"benchmark": "predict", "images": n, "data": what, "run": what_run,
                               "batch_size": BATCH, "batched_seconds": batched_s, "batched_img_per_s": batched,
                               "batched_cpu_seconds": batched_cpu, "load_average": load_before,
                               "batched_read_seconds": result.timings["read"],
                               "batched_model_seconds": result.timings["model"],
                               "baseline_images": count, "baseline_img_per_s": single,
                               "ratio": batched / single}
        if cli:
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "predict", str(folder), "--run",
                                   str(run_path), "--top-k", "1"], capture_output=True, text=True)
            cli_s = time.perf_counter() - t
            if proc.returncode != 0:
                raise RuntimeError(f"cli.py predict failed: {proc.stderr[-500:]}")
            out["cli_seconds"] = cli_s
            log(f"(c) `python cli.py predict FOLDER` from the shell: {cli_s:.2f} s for {n:,} files, "
                "interpreter start, imports and model load included")
    log(f"ratio batched/one-at-a-time = {out['ratio']:.1f}x")
    out["machine"] = machine()
    return out
