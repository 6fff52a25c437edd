"""The numba threading layer: OpenMP first when the loader runs without torch computing on the
CPU (a GPU run, `bench loader`), TBB first when torch trains on the CPU, the user's env always."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.numba_threads import LOADER_BOUND, TORCH_ON_CPU, layer_priority
from tests.test_train import tiny_config
from training.components import Holdout, build_loaders
from training.device import DeviceSetup
from training.distributed import DistContext

ROOT = Path(__file__).resolve().parents[1]


def test_priority_follows_where_torch_computes():
    assert layer_priority(torch_on_cpu=False, environ={})[0] == "omp"
    assert layer_priority(torch_on_cpu=True, environ={})[0] == "tbb"


@pytest.mark.parametrize("name", ["NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"])
def test_the_users_environment_wins(name):
    assert layer_priority(torch_on_cpu=False, environ={name: "workqueue"}) is None
    assert layer_priority(torch_on_cpu=False, environ={name: ""}) == LOADER_BOUND


def _loadable(layer: str) -> bool:
    module = {"omp": "numba.np.ufunc.omppool", "tbb": "numba.np.ufunc.tbbpool",
              "workqueue": "numba.np.ufunc.workqueue"}[layer]
    try:
        importlib.import_module(module)
    except (ImportError, OSError):
        return False
    return True


@pytest.mark.parametrize("torch_on_cpu", [False, True])
def test_the_process_runs_the_first_loadable_layer(torch_on_cpu):
    """In a fresh process (the layer is fixed at the first parallel region): numba runs the first
    layer of the chosen order that loads on this machine."""
    code = (f"from pipeline.numba_threads import prefer_threading_layer; prefer_threading_layer({torch_on_cpu})\n"
            "import numba, numpy as np\n"
            "@numba.njit(parallel=True)\n"
            "def f(a):\n"
            "    for i in numba.prange(a.shape[0]): a[i] += 1\n"
            "    return a\n"
            "f(np.zeros(8)); print(numba.threading_layer())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    order = TORCH_ON_CPU if torch_on_cpu else LOADER_BOUND
    assert out.stdout.strip() == next(layer for layer in order if _loadable(layer))


@pytest.mark.parametrize("device, on_cpu", [("cpu", True), ("cuda", False)])
def test_build_loaders_chooses_before_any_loader(monkeypatch, device, on_cpu):
    """Training asks for the order before it builds a loader (whose first batch fixes the layer):
    TBB first on the CPU, OpenMP first when a GPU computes (a mocked CUDA device stops right there)."""
    asked: list[bool] = []

    class Chosen(Exception):
        pass

    def record(torch_on_cpu: bool) -> None:
        asked.append(torch_on_cpu)
        raise Chosen

    monkeypatch.setattr("pipeline.numba_threads.prefer_threading_layer", record)
    setup = DeviceSetup(torch.device(device), None, False, False)
    with pytest.raises(Chosen):
        build_loaders(tiny_config(Path("data"), Path("run")), setup, DistContext(), Holdout(None, None))
    assert asked == [on_cpu]
