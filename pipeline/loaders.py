"""`--loader ffcv|torch|auto`: which data path a run uses, and one line saying why.

Both paths give the same augmented pixels for the same (seed, epoch, image); they differ in shuffle
order, in what they need installed (FFCV + its system libraries vs torch alone) and in where the
per-batch work runs (numba threads on the host vs torch ops on the training device).
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.errors import UserError
from pipeline.manifest import ffcv_missing, has_betons, read_manifest

LOADERS = ("ffcv", "torch", "auto")

# What `auto` picks on CUDA when FFCV is usable: to be decided from the GPU benchmark (`bench
# loader` / `bench train` on a GPU, not yet run). Until then "ffcv", the path the GPU figures
# in docs/BENCHMARKS.md will have been planned around; the torch path needs no host work per batch
# and may well win there.
AUTO_ON_CUDA = "ffcv"


def ffcv_import_error() -> str | None:
    """None when FFCV imports, else why not (one clause). The first call costs FFCV's import (seconds);
    torch's thread count, which importing FFCV resets, is put back."""
    threads = torch.get_num_threads()
    try:
        return ffcv_missing()
    finally:
        torch.set_num_threads(threads)


def resolve_loader(name: str, device: torch.device | str,
                   data_dir: str | Path | None = None) -> tuple[str, str]:
    """(kind, reason): kind is "ffcv" or "torch". With `data_dir`, its manifest says whether the
    betons exist (data prepared without FFCV has only the .npz arrays)."""
    if name not in LOADERS:
        raise UserError(f"--loader must be one of {', '.join(LOADERS)}, got {name!r}")
    device = torch.device(device)
    if name == "torch":
        return "torch", "--loader torch"
    missing = ffcv_import_error()
    betons = True if data_dir is None else has_betons(read_manifest(data_dir))
    if name == "ffcv":
        if missing is not None:
            raise UserError(f"--loader ffcv: FFCV does not import here ({missing}); install it (scripts/setup.sh "
                            "installs requirements.lock and its system libraries) or use --loader torch")
        if not betons:
            raise UserError(f"--loader ffcv: {data_dir}/ was prepared without FFCV and has no .beton files; run "
                            f"`python cli.py prepare --out {data_dir} --force` where FFCV imports, or use --loader torch")
        return "ffcv", "--loader ffcv"
    if missing is not None:
        return "torch", f"auto: FFCV does not import ({missing})"
    if not betons:
        return "torch", f"auto: {data_dir}/ has no .beton files (prepared without FFCV)"
    if device.type == "cuda":
        return AUTO_ON_CUDA, f"auto: {AUTO_ON_CUDA} on CUDA (pipeline.loader_choice.AUTO_ON_CUDA)"
    return "ffcv", "auto: FFCV imports and the betons exist"
