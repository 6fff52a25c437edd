"""`bench prepare`: archive → betons, split into its steps, against the floor of merely reading.

The baseline is reading and unpickling the archive (what any loader of the python-pickle format
must pay); the ratio says how much validating and writing the betons adds to it. The whole-command
wall time (interpreter, imports, output) is measured in a child process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def bench_prepare(source: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    import ffcv  # noqa: F401  (import cost is reported separately, by the child process)

    from bench.common import machine
    from pipeline.cifar_source import read_cifar10
    from pipeline.prepare import channel_stats, write_prepared

    channel_stats(read_cifar10(source).train.images[:10])  # compile/load the numba histogram
    t0 = time.perf_counter()
    data = read_cifar10(source)
    read_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as out:
        t1 = time.perf_counter()
        write_prepared(data, Path(out))
        write_s = time.perf_counter() - t1
    with tempfile.TemporaryDirectory(prefix="bench-prepare-cli-") as out:
        t2 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "cli.py"), "prepare", "--source", str(source), "--out", out],
                       check=True, capture_output=True)
        wall = time.perf_counter() - t2
    work = read_s + write_s
    log(f"read + unpickle + validate the archive (baseline): {read_s:5.2f} s")
    log(f"stats + write train/test betons + test.npz + hash:  {write_s:5.2f} s")
    log(f"work after imports: {work:.2f} s for {len(data.train.labels) + len(data.test.labels):,} images; "
        f"whole `cli.py prepare` command: {wall:.2f} s wall")
    log(f"ratio work/baseline = {work / read_s:.2f}x")
    return {"benchmark": "prepare", "source": str(source), "read_s": read_s, "write_s": write_s,
            "work_s": work, "command_wall_s": wall, "ratio": work / read_s, "machine": machine()}
