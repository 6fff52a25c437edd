"""Which numba threading layer runs the loader's parallel code (FFCV's stages and the fused op).

The layer is chosen once per process, when the first parallel region runs, so this is called
before any loader is built. The loader's img/s per thread falls less from one thread to two under
OpenMP than under numba's default, TBB: TBB's pool costs more per parallel region (a fixed cost
per call, not the kernel), and FFCV runs two regions per batch. But with torch computing on the
CPU in the same process, the OpenMP layer slowed the loader-fed train step (measurements:
docs/BENCHMARKS.md, 'loader per-thread scaling: the numba threading layer'). So: OpenMP first
where torch does not compute on the CPU (a GPU run, `bench loader`), numba's own order (TBB first)
where it does. `NUMBA_THREADING_LAYER` or
`NUMBA_THREADING_LAYER_PRIORITY` in the environment is the user's choice and always wins; a layer
that cannot load (no libgomp, no TBB) is skipped by numba in the priority order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

LOADER_BOUND = ["omp", "tbb", "workqueue"]
TORCH_ON_CPU = ["tbb", "omp", "workqueue"]  # numba's own default order
USER_SETTINGS = ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")


def layer_priority(torch_on_cpu: bool, environ: Mapping[str, str] = os.environ) -> list[str] | None:
    """The priority order to use, or None when the environment already chose."""
    if any(environ.get(name) for name in USER_SETTINGS):
        return None
    return list(TORCH_ON_CPU if torch_on_cpu else LOADER_BOUND)


def prefer_threading_layer(torch_on_cpu: bool) -> None:
    """Set numba's layer order for this process, before its first parallel region (later calls
    change nothing: numba keeps the layer it started). Without numba (the torch loader's torch
    backend) there is nothing to choose."""
    priority = layer_priority(torch_on_cpu)
    if priority is None:
        return
    try:
        import numba
    except ImportError:
        return
    numba.config.THREADING_LAYER_PRIORITY = priority  # type: ignore[attr-defined]  # set from the env at import
