"""scripts/device/cifar_pack.py: the lossless transfer format the GPU runs' data travelled in."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from tests import synth
from tests.test_docs import ROOT, load_script


def _batch(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_pack_then_unpack_gives_back_every_batch_exactly(tmp_path):
    """Each batch's pixels, labels and batch label come back byte for byte (the colour transform and
    the predictor wrap modulo 256, so saturated pixels round-trip too), and batches.meta travels raw."""
    cifar_pack = load_script("device/cifar_pack.py")
    members = synth.make_members(n_train=60, n_test=20)
    src = synth.write_folder(tmp_path / "src", members)
    first = _batch(src / "data_batch_1")
    first[b"data"][:2] = np.array([0, 255], np.uint8).repeat(3072 // 2)  # extremes next to each other
    (src / "data_batch_1").write_bytes(pickle.dumps(first))
    names = [*synth.TRAIN_NAMES, "test_batch"]
    cifar_pack.pack(src, tmp_path / "part", names)
    shutil.copyfile(src / "batches.meta", tmp_path / "part" / "batches.meta.raw")
    cifar_pack.unpack(tmp_path / "part", tmp_path / "dest")
    for name in names:
        before, after = _batch(src / name), _batch(tmp_path / "dest" / name)
        assert np.array_equal(before[b"data"], after[b"data"]) and after[b"data"].dtype == np.uint8
        assert list(before[b"labels"]) == after[b"labels"] and before[b"batch_label"] == after[b"batch_label"]
    assert (tmp_path / "dest" / "batches.meta").read_bytes() == members["batches.meta"]


def test_unpack_refuses_pixels_that_do_not_hash_as_packed(tmp_path):
    cifar_pack = load_script("device/cifar_pack.py")
    src = synth.write_folder(tmp_path / "src", synth.make_members(n_train=10, n_test=10))
    cifar_pack.pack(src, tmp_path / "part", ["test_batch"])
    meta_path = tmp_path / "part" / "test_batch.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "sha256": "0" * 64}))
    with pytest.raises(SystemExit, match="test_batch does not decode to the pixels that were packed"):
        cifar_pack.unpack(tmp_path / "part", tmp_path / "dest")
    assert not (tmp_path / "dest" / "test_batch").exists()


_FAKE_PYTHON = '''#!{python}
"""python3 for sweep_call.sh without a GPU: `cli.py train` writes a finished run whose test accuracy
is its --lr value and notes how many runs are active at once; `-` (the script's inline Python) and
weights_back.py (from the repository) run in the real interpreter; cifar_pack and prepare do the
least the script checks for."""
import json, os, shutil, sys, time
from pathlib import Path

args = sys.argv[1:]
if args[0] == "-":
    os.execv({python!r}, [{python!r}, *args])
if args[0] == "scripts/device/weights_back.py":
    os.execv({python!r}, [{python!r}, {weights_back!r}, *args[1:]])
if args[:2] == ["cli.py", "prepare"]:
    Path("data").mkdir()
    Path("data/train.npz").touch()
    Path("data/manifest.json").write_text("{{}}")
if args[:2] == ["cli.py", "train"]:
    run = Path(args[args.index("--run") + 1])
    epochs = int(args[args.index("--epochs") + 1]) if "--epochs" in args else 15
    active = Path("runs/.active")
    active.mkdir(exist_ok=True)
    (active / run.name).touch()
    with open("runs/.concurrent", "a") as f:
        f.write(f"{{len(list(active.iterdir()))}}\\n")
    time.sleep(0.6)
    run.mkdir(parents=True)
    shutil.copyfile(os.environ["FAKE_CHECKPOINT"], run / "last.pt")
    acc = float(args[args.index("--lr") + 1])
    (run / "summary.json").write_text(json.dumps({{"status": "finished", "epochs": epochs, "final_test_acc": acc}}))
    (active / run.name).unlink()
'''


def test_sweep_call_runs_p_at_a_time_then_returns_every_runs_files_and_the_best_weights(tmp_path):
    """scripts/device/sweep_call.sh, without a GPU (python3 and nvidia-smi replaced on PATH): it
    finishes (a bare `wait` once waited for its own `tee` and lost a loan's files), never runs more
    than P trainings at once, packs every run's files, and brings back the weights of the best run of
    ≤ 15 epochs without the optimizer state (the 40-epoch run scores higher and is passed over)."""
    import torch

    bin_dir, work, out, cifar = (tmp_path / d for d in ("bin", "work", "out", "cifar"))
    for d in (bin_dir, work, out, cifar):
        d.mkdir()
    (cifar / "test_batch").touch()
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": {"state": {}}, "epoch": 15}, checkpoint)
    python = bin_dir / "python3"
    python.write_text(_FAKE_PYTHON.format(python=sys.executable, weights_back=str(ROOT / "scripts/device/weights_back.py")))
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: none (test)'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(out), "BUDGET": "100", "P": "2",
           "EST": "10", "CIFAR": str(cifar), "FAKE_CHECKPOINT": str(checkpoint)}
    runs = ["a:--lr 0.80", "b:--lr 0.86", "long:--lr 0.90 --epochs 40", "c:--lr 0.84"]
    proc = subprocess.run(["bash", str(ROOT / "scripts/device/sweep_call.sh"), "part", *runs], cwd=work, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    concurrent = [int(n) for n in (work / "runs/.concurrent").read_text().split()]
    assert len(concurrent) == 4 and max(concurrent) <= 2
    with tarfile.open(out / "runs.tgz") as tar:
        names = tar.getnames()
    assert {f"runs/{n}/summary.json" for n in ("a", "b", "long", "c")} <= set(names)
    assert not any(n.endswith(".pt") for n in names)
    assert "weights back: b" in (out / "sweep.log").read_text()
    parts = sorted(out.glob("best-weights.pt.part*"))
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"".join(p.read_bytes() for p in parts))
    saved = torch.load(weights, weights_only=True)
    assert "optimizer" not in saved and torch.equal(saved["model"]["w"], torch.ones(2))
