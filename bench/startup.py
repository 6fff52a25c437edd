"""`bench startup`: process start → first batch, split into imports, loader build and JIT.

Each measurement runs in a fresh child process: once with an empty numba cache (what a new
checkout pays) and once more with the cache the first run left (every later run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import torch
t1 = time.perf_counter()
import ffcv
t2 = time.perf_counter()
from pipeline.ffcv_loader import make_loader
loader = make_loader({data!r}, "train", 512, seed=0, copy=False)
t3 = time.perf_counter()
next(iter(loader))
t4 = time.perf_counter()
print(json.dumps({{"import_torch": t1 - t0, "import_ffcv": t2 - t1, "build_loader": t3 - t2,
                  "first_batch": t4 - t3, "total": t4 - t0}}))
"""


def _child(data_dir: Path, cache_dir: str) -> dict[str, float]:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT), data=str(data_dir))],
                         env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall"] = time.perf_counter() - start
    return result


def _help_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


def bench_startup(data_dir: str | Path = "data", log: Callable[[str], None] = print) -> dict[str, Any]:
    from bench.common import data_or_synthetic, machine

    data_dir, what = data_or_synthetic(data_dir, log=log)
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        cold = _child(data_dir, cache)
        warm = _child(data_dir, cache)
    help_s = _help_seconds()
    for name, r in (("cold numba cache", cold), ("warm numba cache", warm)):
        log(f"{name:>17}: import torch {r['import_torch']:.2f} s, import ffcv {r['import_ffcv']:.2f} s, "
            f"build loader {r['build_loader']:.2f} s, first batch (JIT) {r['first_batch']:.2f} s, "
            f"total {r['total']:.2f} s")
    log(f"`python cli.py --help`: {help_s:.2f} s (imports neither torch nor FFCV)")
    log(f"ratio cold/warm first batch = {cold['first_batch'] / max(warm['first_batch'], 1e-9):.1f}x")
    return {"benchmark": "startup", "data": what, "cold": cold, "warm": warm, "help_seconds": help_s,
            "ratio": cold["first_batch"] / max(warm["first_batch"], 1e-9), "machine": machine()}
