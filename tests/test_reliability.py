"""Faults a long run must survive, with real processes and real signals (issue 7).

Every training here is a subprocess running `cli.py train` exactly as a user would, so the
signals, exit codes and messages are the real ones. The runs are tiny (2 epochs × 8 steps of 32
on synthetic 32×32 images, ~15 s each on 2 cores) but the code path is the full one.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.rundir import RunDir
from models.loading import load_run_model
from tests.test_train import assert_one_clear_error, cli, metrics_without_timing, run_train, tiny_config

ROOT = Path(__file__).resolve().parents[1]
# Each `cli.py train` here is a fresh process: at width 8 on the torch loader it starts in ~4 s (import
# torch) instead of ~12 s (FFCV compiles its numba functions on import, uncached); the FFCV path's
# exact resume is tested in-process (tests/test_train.py).
TRAIN_ARGS = ("--epochs", "2", "--batch-size", "32", "--subset", "256", "--test-subset", "50", "--width", "8",
              "--loader", "torch", "--device", "cpu", "--quiet", "--workers", "2")


def train_argv(data: Path, run: Path) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "train", "--data", str(data), "--run", str(run), *TRAIN_ARGS]


def resume(run: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--resume", str(run), "--quiet"],
                          capture_output=True, text=True, timeout=600)


def metrics(run: Path) -> list[dict]:
    return metrics_without_timing(RunDir(run))


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return torch.load(RunDir(run).checkpoint_path(which), map_location="cpu", weights_only=True)["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended (rc {proc.returncode}) before the signal could be sent:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the training subprocess")
        time.sleep(0.02)


def read_until(proc: subprocess.Popen, marker: str) -> None:
    """Read the child's stdout until a line holds `marker`; fail with its stderr if it ends first."""
    line = proc.stdout.readline()
    while line and marker not in line:
        line = proc.stdout.readline()
    assert marker in line, proc.communicate()[1]


def epochs_done(run: Path) -> int:
    return len(RunDir(run).read_metrics()) if (run / "metrics.csv").is_file() else 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prepared_dir) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    run = tmp_path_factory.mktemp("ref") / "run"
    proc = subprocess.run(train_argv(prepared_dir, run), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert epochs_done(run) == 2
    # the last line names the next commands with this run's path (not "the newest run under runs/")
    assert proc.stdout.strip().splitlines()[-1] == (f"next: python cli.py evaluate {run}  ·  python cli.py explain {run} "
                                                    f"--layer 3 --layer 4  ·  python cli.py report {run}")
    return run


# ---- 2. kill and resume ---------------------------------------------------------------------------

CHILD_PAUSING_IN_EPOCH_2 = """
import sys, time
sys.path.insert(0, {root!r})
import training.epoch
real_step = training.epoch._optimizer_step
calls = 0

def pausing_step(parts, factor):
    global calls
    real_step(parts, factor)
    calls += 1
    if calls == 11:  # epoch 2's 4th step (7 steps of 32 an epoch: 231 images beside the validation split)
        print("INEPOCH2", flush=True)
        time.sleep(2)  # the signal arrives here; the step boundary after it must stop the run

training.epoch._optimizer_step = pausing_step
sys.argv = {argv!r}
import cli
cli.main()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_sigterm_save_the_current_state_and_resume_exactly(sig, reference, prepared_dir, tmp_path):
    run = tmp_path / "run"
    script = CHILD_PAUSING_IN_EPOCH_2.format(root=str(ROOT), argv=train_argv(prepared_dir, run)[1:])
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    read_until(proc, "INEPOCH2")
    proc.send_signal(sig)  # a real signal, in the middle of epoch 2
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"{sig.name}: stopped in epoch 2 after step" in lines[0], err
    assert f"python cli.py train --resume {run}" in lines[0]
    state = RunDir(run).load_checkpoint("last")
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 1 and state["partial"]["step"] == 4
    assert RunDir(run).read_summary().status == "interrupted"

    done = resume(run)
    assert done.returncode == 0, done.stderr
    assert f"(epoch 2 from step {state['partial']['step'] + 1})" in done.stdout
    assert metrics(run) == metrics(reference)
    assert same_weights(weights(run), weights(reference))
    assert RunDir(run).read_summary().status == "finished"


def test_sigkill_during_an_epoch_resumes_to_the_same_result(reference, prepared_dir, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(train_argv(prepared_dir, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: epochs_done(run) >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert RunDir(run).load_checkpoint("last")["epoch"] == 1

    done = resume(run)
    assert done.returncode == 0, done.stderr
    assert metrics(run) == metrics(reference)
    assert same_weights(weights(run), weights(reference))


CHILD_STALLING_IN_CHECKPOINT_WRITE = """
import os, sys, time
sys.path.insert(0, {root!r})
import torch
real_save = torch.save

def stalling_save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if ".last.pt." in getattr(f, "name", str(f)) and obj.get("epoch") == 2:
        f.flush()
        f.truncate(f.tell() // 2)  # half of the new checkpoint is on disk ...
        f.flush()
        print("MIDWRITE", flush=True)
        time.sleep(600)  # ... when the SIGKILL arrives

torch.save = stalling_save
sys.argv = {argv!r}
import cli
cli.main()
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(reference, prepared_dir, tmp_path):
    run = tmp_path / "run"
    argv = train_argv(prepared_dir, run)[1:]
    script = CHILD_STALLING_IN_CHECKPOINT_WRITE.format(root=str(ROOT), argv=argv)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    read_until(proc, "MIDWRITE")
    proc.kill()
    proc.communicate(timeout=60)

    stale = list(run.glob(".last.pt.*.tmp"))
    assert len(stale) == 1  # the half-written new checkpoint, under its temp name
    state = RunDir(run).load_checkpoint("last")  # the previous one: whole and loadable
    assert state["epoch"] == 1 and state["partial"] is None

    done = resume(run)
    assert done.returncode == 0, done.stderr
    assert not list(run.glob(".*.tmp"))  # cleaned up on resume
    assert metrics(run) == metrics(reference)
    assert same_weights(weights(run), weights(reference))


# ---- 1. torchrun / DDP ----------------------------------------------------------------------------

def test_torchrun_two_cpu_ranks_with_gloo(prepared_dir, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed beside this Python")
    run = tmp_path / "ddp"
    args = [*TRAIN_ARGS[:-2], "--workers", "1", "--tta", "--tta-shift", "1"]  # one loader thread per rank on 2 cores
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(ROOT / "cli.py"), "train",
                           "--data", str(prepared_dir), "--run-dir", str(run), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("done: best epoch") == 1  # only rank 0 prints
    assert "× 2 processes (gloo, global batch 64)" in proc.stdout
    # 256 images less 25 validation images split over 2 ranks (116 each), 32 per rank per step
    assert "3 steps/epoch of 32" in proc.stdout

    r = RunDir(run)
    summary = r.read_summary()
    assert summary.status == "finished" and summary.processes == 2
    assert summary.weights_in_sync is True
    assert len(set(summary.weight_digests)) == 1
    assert r.read_config()["global_batch_size"] == 64
    assert [row["epoch"] for row in r.read_metrics()] == [1, 2]
    for name in ("last.pt", "best.pt", "predictions_last.npz", "curves.png"):
        assert (run / name).is_file(), name

    # rank 0's last.pt is the weights both ranks ended with
    import hashlib

    digest = hashlib.sha256()
    for tensor in weights(run).values():
        digest.update(tensor.contiguous().numpy().tobytes())
    assert digest.hexdigest()[:16] == summary.weight_digests[0]

    # the test shards were gathered back into test order: a one-process pass over the same
    # images with the saved weights gives the same predictions, and the same TTA accuracy
    from analysis.inspection.evaluate import evaluate
    from analysis.inspection.test_predictions import predict_probs
    from pipeline.manifest import read_manifest, read_test_arrays

    manifest = read_manifest(prepared_dir)
    images, labels = read_test_arrays(prepared_dir)
    model = load_run_model(r, "last")
    probs = predict_probs(model, images[:50], np.array(manifest["train_mean"]), np.array(manifest["train_std"]))
    saved = r.read_predictions("last")
    assert np.array_equal(saved.labels, labels[:50])
    np.testing.assert_allclose(saved.probs, probs, atol=1e-4)
    assert summary.final_test_acc_tta == evaluate(r.path, which="last", tta=True).accuracy


# ---- 3. divergence --------------------------------------------------------------------------------

def test_divergence_keeps_the_last_good_checkpoint(prepared_dir, tmp_path):
    run = tmp_path / "run"
    run_train(tiny_config(prepared_dir, run, epochs=1))
    state = torch.load(run / "last.pt", weights_only=True)
    # An infinite learning rate from epoch 2 on: the first update makes the weights non-finite, so
    # the loss is NaN by the epoch's second step. (1e12 was enough for a pure LayerNorm network;
    # with BatchNorm shortcuts every norm rescales the huge weights and the loss stayed finite
    # through epoch 2.)
    state["optimizer"]["param_groups"][0]["lr"] = float("inf")
    torch.save(state, run / "last.pt")
    before = (run / "last.pt").read_bytes()
    with pytest.raises(UserError, match=r"diverged: the loss became (nan|inf) in epoch 2 by step \d+"):
        run_train(tiny_config(prepared_dir, run), resume=run, extra_epochs_to=3)
    assert (run / "last.pt").read_bytes() == before
    assert RunDir(run).read_summary().status == "diverged"
    assert RunDir(run).load_checkpoint("last")["epoch"] == 1


# ---- 4. untrusted files ---------------------------------------------------------------------------

class WritesAFile:
    """Unpickling this would create `path`: the classic malicious-checkpoint payload."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("fmt", ["torch-zip", "plain-pickle"])
def test_a_crafted_checkpoint_never_executes_code(reference, tmp_path, fmt):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    marker = tmp_path / "marker.txt"
    payload = {"format": 1, "model": WritesAFile(marker)}
    if fmt == "torch-zip":
        torch.save(payload, run / "last.pt")
    else:
        (run / "last.pt").write_bytes(pickle.dumps(payload))
    shutil.copy(run / "last.pt", run / "best.pt")

    with pytest.raises(UserError, match="not a loadable checkpoint"):
        RunDir(run).load_checkpoint("last")
    assert_one_clear_error(cli("train", "--resume", str(run), "--epochs", "3"), "last.pt", "not a loadable")
    assert_one_clear_error(cli("explain", "--run", str(run)), "best.pt", "not a loadable")
    assert not marker.exists()


def test_a_checkpoint_from_another_run_is_rejected(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    config = json.loads((run / "config.json").read_text())
    config["run_id"] = "0" * 32  # as if last.pt had been copied in from another run
    (run / "config.json").write_text(json.dumps(config))
    assert_one_clear_error(cli("train", "--resume", str(run), "--epochs", "3"), "belongs to another run")
    assert_one_clear_error(cli("evaluate", "--run", str(run), "--recompute"), "belongs to another run")


def test_evaluate_tta_shift_implies_tta_and_is_bounded(reference, tmp_path):
    """`evaluate --tta-shift N` scores those views without --tta as well; an impossible shift is one
    clear line, and nothing is written."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    proc = cli("evaluate", "--run", str(run), "--tta-shift", "1")
    assert proc.returncode == 0, proc.stderr
    assert "flip + 1-px shift TTA" in proc.stdout and "without it" in proc.stdout
    (run / "analysis" / "evaluation.json").unlink()
    assert_one_clear_error(cli("evaluate", "--run", str(run), "--tta-shift", "9"), "--tta-shift must be between 0 and 8")
    assert not (run / "analysis" / "evaluation.json").exists()


def test_data_from_another_version_or_prepare_is_rejected(prepared_dir, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(prepared_dir, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(manifest))
    assert_one_clear_error(cli("train", "--data", str(newer), "--run", str(tmp_path / "a"), *TRAIN_ARGS),
                           "another version", "prepare")

    swapped = tmp_path / "swapped"
    shutil.copytree(prepared_dir, swapped)
    with open(swapped / "train.beton", "r+b") as fh:  # same size, other bytes: another prepare's beton
        fh.seek(os.path.getsize(swapped / "train.beton") // 2)
        fh.write(b"\xff" * 64)
    proc = cli("train", "--data", str(swapped), "--run", str(tmp_path / "b"), *TRAIN_ARGS)
    assert_one_clear_error(proc, "train.beton", "no longer matches", "prepare")
    assert not (tmp_path / "b").exists()


# ---- 5. disk full / read-only ---------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """Mount a tmpfs of a given size (root only; skipped elsewhere)."""
    mounted: list[Path] = []

    def mount(size_mb: int) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or 'not root'})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_too_little_space_is_refused_before_training(prepared_dir, small_fs):
    fs = small_fs(4)  # width 8 (tiny_config): checkpoints of ~2.4 MB, three needed
    with pytest.raises(UserError, match=r"MB free but checkpoints need about \d+ MB"):
        run_train(tiny_config(prepared_dir, fs / "run"))
    assert not (fs / "run").exists()


def _stop_after_epoch_1(action, run: Path):
    """Act once epoch 1's files have landed: they are written in the background (training/saving.py)
    after the epoch's line is printed, so wait for its summary, the group's last file."""
    def log(message: str) -> None:
        if message.startswith("epoch   1/"):
            deadline = time.monotonic() + 120
            while RunDir(run).read_summary().epochs_done < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # the writer thread closes the summary's temp file after renaming it
            action()
    return log


def test_a_disk_that_fills_up_mid_run_keeps_the_previous_checkpoint(prepared_dir, small_fs):
    fs = small_fs(20)  # room for last.pt + best.pt + one temp copy (~7 MB at width 8), as the pre-check asks

    def fill() -> None:
        with open(fs / "filler", "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, shutil.disk_usage(fs).free - (1 << 20))

    from training.fit import train

    run = fs / "run"
    with pytest.raises(UserError, match="no space left while writing .*(last|best).pt.*previous file.*untouched"):
        train(tiny_config(prepared_dir, run), log=_stop_after_epoch_1(fill, run), progress=False)
    assert RunDir(run).load_checkpoint("last")["epoch"] == 1
    assert not list(run.glob(".*.tmp"))
    assert RunDir(run).read_summary().status == "failed"


def test_a_disk_that_turns_read_only_mid_run_keeps_the_previous_checkpoint(prepared_dir, small_fs):
    fs = small_fs(20)

    def remount_ro() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)

    from training.fit import train

    run = fs / "run"
    cfg = tiny_config(prepared_dir, run)
    # remount,ro (the test's stand-in for a failing disk) is refused while a file is open for
    # writing, as TensorBoard's event file is; a real disk error remounts regardless.
    cfg.run.tensorboard = False
    try:
        with pytest.raises(UserError, match="cannot write to .*read-only"):
            train(cfg, log=_stop_after_epoch_1(remount_ro, run), progress=False)
        assert RunDir(run).load_checkpoint("last")["epoch"] == 1
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(fs)], capture_output=True)


def test_a_read_only_output_location_is_refused_up_front(prepared_dir, small_fs):
    fs = small_fs(20)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    proc = cli("train", "--data", str(prepared_dir), "--run", str(fs / "run"), *TRAIN_ARGS)
    assert_one_clear_error(proc, str(fs / "run"))
    assert not (fs / "run").exists()


def test_a_mid_epoch_state_resumes_only_with_the_same_number_of_processes(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    state = torch.load(run / "last.pt", weights_only=True)
    state["epoch"] = 1
    state["partial"] = {"epoch": 1, "step": 3, "loss_sum": 1.0, "correct": 1.0, "seen": 96.0,
                        "seconds": 1.0, "world": 2}  # as saved by a 2-process torchrun
    torch.save(state, run / "last.pt")
    assert_one_clear_error(cli("train", "--resume", str(run), "--epochs", "3"),
                           "middle of epoch 2 by 2 process(es)", "same number of processes")


def test_resuming_on_other_data_is_refused(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    config = json.loads((run / "config.json").read_text())
    config["data"]["sha256"]["train"] = "0" * 64  # trained on other data than the folder holds now
    (run / "config.json").write_text(json.dumps(config))
    before = (run / "last.pt").read_bytes()
    assert_one_clear_error(cli("train", "--resume", str(run), "--epochs", "3"), "differs from the data", "sha256")
    assert (run / "last.pt").read_bytes() == before
