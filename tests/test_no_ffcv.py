"""Without FFCV: `prepare` writes the arrays and manifest only and says so in one line, the torch
loader reads them, `--loader` resolution explains itself, and nothing on that path imports FFCV
(nor numba, with the loader's torch augment backend). Each check runs in a subprocess where `import ffcv` fails, as on a
machine where it is not installed (sys.modules["ffcv"] = None makes every import of it raise
ImportError). Also: requirements-noffcv.txt stays requirements.lock minus FFCV's own packages.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests import synth

ROOT = Path(__file__).resolve().parents[1]
BLOCK_FFCV = "import sys; sys.modules['ffcv'] = None\n"


def run_blocked(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    env["NO_COLOR"] = "1"
    return subprocess.run([sys.executable, "-c", BLOCK_FFCV + code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bare_data(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`cli.py prepare` of a small synthetic archive (200/50 images) with FFCV blocked."""
    base = tmp_path_factory.mktemp("noffcv")
    archive = synth.write_archive(base / "cifar-10-python.tar.gz", synth.make_members(n_train=200, n_test=50))
    out = base / "data"
    # The CLI insists on 50,000 / 10,000 CIFAR images; the library call admits the small set.
    code = (f"sys.path.insert(0, {str(ROOT)!r})\nfrom pipeline.prepare import prepare\n"
            f"prepare({str(archive)!r}, {str(out)!r}, check_counts=False)\n"
            "assert sys.modules['ffcv'] is None\n")
    proc = run_blocked(code)
    return out, proc


def test_prepare_without_ffcv_writes_arrays_and_manifest(bare_data):
    out, proc = bare_data
    assert proc.returncode == 0, proc.stderr
    notices = [line for line in (proc.stdout + proc.stderr).splitlines() if "FFCV" in line]
    assert len(notices) == 1 and "--loader torch" in notices[0], proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".readers.lock", "manifest.json", "test.npz", "train.npz"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["betons"] == []
    assert m["splits"]["train"]["count"] == 200 and "sha256" not in m["splits"]["train"]
    assert set(m["splits"]["train"]["arrays"]) == {"file", "sha256", "bytes"}


def test_torch_loader_without_ffcv_or_numba(bare_data):
    out, _ = bare_data
    code = f"""
sys.path.insert(0, {str(ROOT)!r})
import torch
from common.errors import UserError
from pipeline.loaders import resolve_loader
from pipeline.torch_loader import make_torch_loader
from pipeline.manifest import read_manifest, split_digests, verify_betons
kind, why = resolve_loader('auto', torch.device('cpu'), {str(out)!r})
assert kind == 'torch' and 'does not import' in why, why
try:
    resolve_loader('ffcv', torch.device('cpu'), {str(out)!r})
except UserError as exc:
    assert '--loader torch' in str(exc), exc
else:
    raise AssertionError('--loader ffcv accepted without FFCV')
m = read_manifest({str(out)!r})
assert verify_betons({str(out)!r}, m) == [] and set(split_digests(m)) == {{'train', 'test'}}
train = make_torch_loader({str(out)!r}, 'train', 50, seed=1, augment_backend='torch')
test = make_torch_loader({str(out)!r}, 'test', 32, augment_backend='torch')
n = 0
for x, y in train:
    assert x.shape == (50, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    n += len(y)
assert n == 200 and sum(len(y) for _, y in test) == 50
assert sys.modules['ffcv'] is None
# the torch path itself imports neither FFCV's glue nor numba (only prepare's stats use numba)
assert not any(k == 'numba' or k.startswith('numba.') for k in sys.modules), 'numba imported'
assert 'pipeline.ffcv_ops' not in sys.modules and 'pipeline.kernels' not in sys.modules
# the default on the CPU augments with the numba kernel (numba needs no FFCV)
fast = make_torch_loader({str(out)!r}, 'train', 50, seed=1)
assert fast.backend == 'numba' and sum(len(y) for _, y in fast) == 200
assert sys.modules['ffcv'] is None and 'pipeline.ffcv_ops' not in sys.modules
print('ok')
"""
    proc = run_blocked(code)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_cli_prepare_without_ffcv_refuses_bad_input_in_one_line(tmp_path):
    """The CLI path, blocked: bad input still fails with one `error:` line and writes nothing."""
    out = tmp_path / "out"
    code = (f"import runpy; sys.argv = ['cli.py', 'prepare', '--source', {str(tmp_path / 'nope.tar.gz')!r}, "
            f"'--out', {str(out)!r}]\nrunpy.run_path('cli.py', run_name='__main__')")
    proc = run_blocked(code)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()][0].startswith("error:")
    assert not out.exists()


# ------------------------------------------------------------------------- requirements-noffcv.txt

FFCV_ONLY = {"ffcv", "assertpy", "fastargs", "opencv-python", "psutil", "pytorch-pfn-extras", "terminaltables"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            m = PIN.match(line.strip())
            assert m, f"{path.name}: not an exact pin: {line!r}"
            out[canonical(m.group(1))] = m.group(2)
    return out


def test_noffcv_requirements_are_the_lock_minus_ffcv():
    lock = pins(ROOT / "requirements.lock")
    bare = pins(ROOT / "requirements-noffcv.txt")
    assert FFCV_ONLY <= set(lock), "requirements.lock no longer pins one of FFCV's packages"
    assert bare == {k: v for k, v in lock.items() if k not in FFCV_ONLY}


def test_dropped_packages_are_needed_by_ffcv_only():
    """Against the installed venv's metadata: nothing kept requires a dropped package, and every
    dropped package but ffcv is required by ffcv."""
    try:
        ffcv_requires = {canonical(re.split(r"[ <>=!~\[;(]", r, maxsplit=1)[0])
                         for r in metadata.requires("ffcv") or []}
    except metadata.PackageNotFoundError:
        pytest.skip("ffcv is not installed here")
    assert FFCV_ONLY - {"ffcv"} <= ffcv_requires
    kept = set(pins(ROOT / "requirements-noffcv.txt"))
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if name not in kept:
            continue
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            dep = canonical(re.split(r"[ <>=!~\[;(]", req, maxsplit=1)[0])
            assert dep not in FFCV_ONLY, f"{name} requires {dep}, which requirements-noffcv.txt drops"


def test_forced_prepare_without_ffcv_drops_old_betons(tmp_path, prepared_dir):
    """A folder prepared with FFCV, re-prepared with --force where FFCV does not import: the new
    manifest lists no betons and the old betons are gone (nothing describes them any more)."""
    import shutil

    out = tmp_path / "data"
    shutil.copytree(prepared_dir, out)
    source = json.loads((out / "manifest.json").read_text())["source"]
    code = (f"sys.path.insert(0, {str(ROOT)!r})\nfrom pipeline.prepare import prepare\n"
            f"prepare({source!r}, {str(out)!r}, force=True, check_counts=False)\n")
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".readers.lock", "manifest.json", "test.npz", "train.npz"]
    assert json.loads((out / "manifest.json").read_text())["betons"] == []


def test_a_short_training_run_without_ffcv(bare_data, tmp_path):
    """`cli.py train` end to end on arrays-only data with `import ffcv` failing."""
    out, _ = bare_data
    run = tmp_path / "run"
    argv = ["cli.py", "train", "--data", str(out), "--run", str(run), "--epochs", "1", "--batch-size", "50",
            "--test-subset", "20", "--width", "8", "--device", "cpu", "--quiet"]
    code = (f"sys.path.insert(0, {str(ROOT)!r})\nsys.argv = {argv!r}\nimport cli\n"
            "try:\n    cli.main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "assert sys.modules['ffcv'] is None\n")
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torch loader (auto: FFCV does not import" in proc.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["loader"] == "torch"
    assert "done: best epoch" in proc.stdout
