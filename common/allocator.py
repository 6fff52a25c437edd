"""Which C allocator the CLI's process runs on: tcmalloc where it is installed.

A CPU training step allocates and frees the same large tensors every step (a layer-1 activation
of a batch of 256 in bf16 is 32 MiB). glibc's malloc serves blocks that large with mmap and hands
them back on free, so each step page-faults them in again, paying for it in kernel time.
tcmalloc keeps freed memory for reuse (the faults and the speed of both: docs/BENCHMARKS.md, "The
allocator"; `python cli.py bench train` times both). A process cannot
change its allocator once running, so `cli.py` re-executes itself once with tcmalloc in
LD_PRELOAD, as PyTorch's CPU launcher (`torch.backends.xeon.run_cpu --enable-tcmalloc`) does. It
leaves the process alone off Linux, where tcmalloc is not installed (`scripts/setup.sh` installs
Debian's libtcmalloc-minimal4 where it can), where LD_PRELOAD is already set (the user chose), and
with CIFAR_ALLOCATOR=system. Only the standard library here: this runs before anything else.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
import sys
from collections.abc import Mapping

LIBRARY = "tcmalloc_minimal"
CHOICE = "CIFAR_ALLOCATOR"  # "system": keep the C library's malloc
DONE = "CIFAR_ALLOCATOR_PRELOADED"  # set in the re-executed process: never twice


def preload_env(environ: Mapping[str, str], platform: str = sys.platform, library: str | None = None
                ) -> dict[str, str] | None:
    """The environment to re-execute with (tcmalloc in LD_PRELOAD), or None to run as is.
    `library`: the soname to preload; by default ctypes finds it (None where it is not installed)."""
    if not platform.startswith("linux") or environ.get("LD_PRELOAD") or environ.get(DONE):
        return None
    if environ.get(CHOICE, "").strip().lower() == "system":
        return None
    library = library or ctypes.util.find_library(LIBRARY)
    if not library:
        return None
    # tcmalloc reports every allocation over 1 GiB on stderr; the CLI's errors are one line
    return {**environ, "LD_PRELOAD": library, DONE: "1", "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


@functools.cache
def reexec_with_tcmalloc() -> None:
    """Replace this process by the same command (interpreter options included) with tcmalloc
    preloaded, when `preload_env` says so; otherwise return. The pid stays: torchrun and shells see
    the same process. Decided once per process (cached): `cli.py` asks before importing typer and
    `cli.main()` again, for callers that import the module, and finding the library runs ldconfig."""
    env = preload_env(os.environ)
    if env is not None:
        os.execve(sys.executable, sys.orig_argv, env)


def in_use() -> str:
    """The allocator this process runs on, for benchmark records: "tcmalloc" or "system"."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return "tcmalloc" if "tcmalloc" in maps.read() else "system"
    except OSError:
        return "system"
