"""The CLI's allocator choice: when it re-executes itself with tcmalloc, and when it leaves the
process alone."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.allocator import DONE, preload_env

ROOT = Path(__file__).resolve().parents[1]
LIB = "libtcmalloc_minimal.so.4"


def test_preloads_tcmalloc_once_with_large_allocation_reports_off():
    env = preload_env({"PATH": "/bin"}, "linux", LIB)
    assert env is not None and env["LD_PRELOAD"] == LIB and env["PATH"] == "/bin"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    assert preload_env(env, "linux", LIB) is None  # the re-executed process does not do it again


@pytest.mark.parametrize("environ, platform, library", [
    ({"LD_PRELOAD": "libjemalloc.so.2"}, "linux", LIB),  # the user chose an allocator
    ({"CIFAR_ALLOCATOR": "system"}, "linux", LIB),  # the user asked for the C library's
    ({DONE: "1"}, "linux", LIB),
    ({}, "darwin", LIB),
    ({}, "linux", None),  # not installed (no library found)
])
def test_leaves_the_process_alone(environ, platform, library, monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert preload_env(environ, platform, library) is None


PROBE = ("import sys; sys.path.insert(0, {root!r}); from common.allocator import in_use, reexec_with_tcmalloc; "
         "reexec_with_tcmalloc(); print(in_use(), sys.argv[1:])")


def clean_env() -> dict[str, str]:
    """This environment as a fresh shell's: no allocator preloaded, no re-exec done."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", DONE)}


def run_probe(**env: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT)), "a", "b c"], capture_output=True,
                         text=True, check=True, env={**clean_env(), **env}, timeout=60)
    assert out.stderr == ""
    return out.stdout.strip()


@pytest.mark.skipif(ctypes.util.find_library("tcmalloc_minimal") is None,
                    reason="tcmalloc is not installed (scripts/setup.sh installs libtcmalloc-minimal4 where it can)")
def test_the_process_re_executes_itself_on_tcmalloc_with_the_same_arguments():
    assert run_probe() == "tcmalloc ['a', 'b c']"
    assert run_probe(CIFAR_ALLOCATOR="system") == "system ['a', 'b c']"


@pytest.mark.skipif(ctypes.util.find_library("tcmalloc_minimal") is None,
                    reason="tcmalloc is not installed (scripts/setup.sh installs libtcmalloc-minimal4 where it can)")
def test_cli_re_executes_before_importing_typer():
    """`python cli.py …` re-executes itself on tcmalloc before it imports typer, so the CLI's imports
    run once (in the re-executed process): -X importtime lists common.allocator in both processes
    and typer in one."""
    out = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "cli.py"), "--help"], capture_output=True,
                         text=True, check=True, env=clean_env(), timeout=60)
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert imported.count("common.allocator") == 2
    assert imported.count("typer") == 1


def test_the_decision_is_taken_once_per_process(monkeypatch):
    """cli.py asks before importing typer and cli.main() asks again: where tcmalloc is absent the
    second ask must not search for it again (ctypes.util.find_library runs ldconfig)."""
    import common.allocator as allocator

    searched: list[str] = []
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: searched.append(name))
    for name in ("LD_PRELOAD", DONE, "CIFAR_ALLOCATOR"):
        monkeypatch.delenv(name, raising=False)
    allocator.reexec_with_tcmalloc.cache_clear()
    try:
        allocator.reexec_with_tcmalloc()
        allocator.reexec_with_tcmalloc()
    finally:
        allocator.reexec_with_tcmalloc.cache_clear()
    assert searched == [allocator.LIBRARY]
