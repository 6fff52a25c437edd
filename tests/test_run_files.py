"""What a run writes and when: a new run never takes over someone's folder, an epoch's files land
in the background without holding up the next step, stale predictions are never reported, the
test set is scored when the record needs it, and a resume during the first epoch names the holder."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from common.lock import FolderLock
from common.rundir import RunDir
from tests.test_train import run_train, tiny_config
from training.epoch import score_test
from training.saving import BackgroundWriter

ROOT = Path(__file__).resolve().parents[1]


def test_a_folder_that_is_not_a_run_is_refused_and_left_as_it_was(prepared_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    files = {"metrics.csv": "my,own\n1,2\n", "summary.json": '{"mine": true}', "curves.png": "not a figure"}
    for name, text in files.items():
        (mine / name).write_text(text)
    with pytest.raises(UserError, match=r"holds files but no run of this project \(curves.png, metrics.csv, "
                                        r"summary.json\)"):
        run_train(tiny_config(prepared_dir, mine, epochs=1))
    assert {p.name: p.read_text() for p in mine.iterdir()} == files
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    with pytest.raises(UserError, match="is a file, not a folder"):
        run_train(tiny_config(prepared_dir, a_file, epochs=1))
    assert a_file.read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_train(tiny_config(prepared_dir, empty, epochs=1)).epochs_done == 1  # an empty folder is fine


def test_resume_during_the_first_epoch_names_the_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"run_id": "x", "train": {}}')
    with FolderLock(run, "train"):
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--resume", str(run)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "in use by another process" in proc.stderr and "pid" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--resume", str(run)],
                          capture_output=True, text=True, timeout=120)
    assert "no last.pt checkpoint" in proc.stderr  # nobody holds it: the old message stands


def test_the_next_step_does_not_wait_for_the_epochs_files():
    writer = BackgroundWriter()
    started, release, order = threading.Event(), threading.Event(), []

    def slow_group() -> None:
        started.set()
        release.wait(10)
        order.append("written")

    writer.submit(slow_group)
    started.wait(10)
    order.append("next step")  # runs while the write is still in flight
    release.set()
    writer.wait()
    assert order == ["next step", "written"]

    def failing_group() -> None:
        raise UserError("no space left")

    writer.submit(failing_group)
    with pytest.raises(UserError, match="no space left"):
        writer.wait()  # the error surfaces where the main thread waits
    writer.wait()  # and only once


def test_a_slow_disk_does_not_stall_training(prepared_dir, tmp_path, monkeypatch):
    """Epoch 1's checkpoint write waits until epoch 2 has taken a step: with a write that held up
    training this would never happen (the write gives up after 60 s and the test fails)."""
    import training.epoch as epoch_module

    steps: list[int] = []
    epoch_2_stepped = threading.Event()
    waited: list[bool] = []
    real_save = RunDir.save_checkpoint

    def save_after_epoch_2_steps(self, which, state, also_best=False):
        if state["epoch"] == 1:
            waited.append(epoch_2_stepped.wait(60))
        real_save(self, which, state, also_best)

    real_step = epoch_module._optimizer_step

    def counted_step(parts, factor):
        real_step(parts, factor)
        steps.append(1)
        if len(steps) == 3:  # 2 steps an epoch: the first of epoch 2
            epoch_2_stepped.set()

    monkeypatch.setattr(RunDir, "save_checkpoint", save_after_epoch_2_steps)
    monkeypatch.setattr(epoch_module, "_optimizer_step", counted_step)
    result = run_train(tiny_config(prepared_dir, tmp_path / "run", epochs=2))
    assert waited == [True]
    assert RunDir(result.run.path).load_checkpoint("last")["epoch"] == 2
    assert RunDir(result.run.path).read_summary().status == "finished"
    assert result.run.curves_path.is_file()


def test_predictions_ahead_of_their_checkpoint_are_recomputed(prepared_dir, tmp_path):
    """A disk that fills between an epoch's predictions and its checkpoint leaves them a step
    ahead; evaluate must report the checkpoint's own accuracy, not the stale file's."""
    from analysis.inspection.evaluate import evaluate

    result = run_train(tiny_config(prepared_dir, tmp_path / "run", epochs=1))
    run = result.run
    saved = run.read_predictions("last")
    assert saved is not None and saved.epoch == 1
    wrong = np.roll(np.eye(saved.probs.shape[1], dtype=np.float32)[saved.labels], 1, axis=1)  # all wrong
    run.write_predictions("last", saved.labels, wrong, epoch=2)  # "epoch 2" never reached last.pt
    notes: list[str] = []
    evaluated = evaluate(run.path, which="last", log=notes.append)
    assert evaluated.source == "recomputed" and evaluated.accuracy == pytest.approx(saved.accuracy)
    assert any("scored after epoch 2 but last.pt holds epoch 1" in n for n in notes)


@pytest.mark.parametrize(("every", "decided_on", "last", "new_best", "expected"), [
    ("epoch", "validation", False, False, True),
    ("needed", "validation", False, False, False),
    ("needed", "validation", False, True, True),
    ("needed", "validation", True, False, True),
    ("needed", "test", False, False, True),
    ("needed", "last epoch", False, False, False),
    ("needed", "last epoch", True, False, True),
])
def test_the_test_set_is_scored_when_the_record_needs_it(every, decided_on, last, new_best, expected):
    assert score_test(every, decided_on, last, new_best) is expected


def test_needed_scoring_leaves_test_cells_empty_between_bests(prepared_dir, tmp_path):
    cfg = tiny_config(prepared_dir, tmp_path / "run", epochs=3, schedule="onecycle")
    cfg.run.test_every = "needed"
    result = run_train(cfg)
    rows = result.run.read_metrics()
    assert [r["test_acc"] != r["test_acc"] for r in rows] == [True, True, False]  # NaN until the final epoch
    assert result.run.read_predictions("last").epoch == 3
    assert result.run.read_summary().final_test_acc == rows[-1]["test_acc"]


def test_a_summary_before_any_scored_epoch_is_strict_json():
    """Mid-run under --test-every needed the epochs score NaN, and an interrupted run's
    summary.json said `"best_acc": NaN`, which strict JSON parsers refuse: it says null until an
    epoch is scored, and the score once one is."""
    import json

    from common.records import Status
    from training.saving import summary_of
    from training.state import TrainState

    def strict(summary) -> dict:
        def refuse(name: str) -> None:
            raise ValueError(name)
        return json.loads(json.dumps(summary.to_dict()), parse_constant=refuse)

    state = TrainState(run_id="r")
    assert strict(summary_of(state, Status.RUNNING, 3, "last epoch")).get("best_acc") is None
    state.record({"epoch": 1, "test_acc": float("nan")}, float("nan"), latest=True)
    assert strict(summary_of(state, Status.INTERRUPTED, 3, "last epoch")).get("best_acc") is None
    state.record({"epoch": 2, "test_acc": 0.5}, 0.5, latest=True)
    assert strict(summary_of(state, Status.FINISHED, 2, "last epoch"))["best_acc"] == 0.5


def test_an_old_config_is_read_in_the_current_format_in_one_place(tmp_path):
    """common/upgrade.py: each field's absence means what it meant when the run was written; a
    current record passes through unchanged."""
    from common.config import TrainConfig
    from common.upgrade import upgrade_config

    current = {"run_id": "r", "train": TrainConfig().to_dict(), "loader": "torch", "precision": "bf16",
               "device": "CPU (2 threads)"}
    assert upgrade_config(current) == current
    old = {"run_id": "r", "train": TrainConfig().to_dict(), "device": "CPU (2 threads)"}
    del old["train"]["data"]["val"], old["train"]["model"]["shortcut_norm"]
    run = RunDir(tmp_path / "old")
    run.path.mkdir()
    (run.path / "config.json").write_text(__import__("json").dumps(old))
    cfg = run.train_config()
    assert (cfg.data.val, cfg.model.shortcut_norm, cfg.run.amp) == (0, "same", False)
    assert run.read_config()["loader"] == "ffcv"
    on_gpu = dict(old, device="CUDA (NVIDIA H100)")
    assert upgrade_config(on_gpu)["train"]["run"]["amp"] is None  # the CUDA default, as it trained


def test_a_run_moves_to_a_fresh_prepare_of_the_same_source(prepared_dir, synth_archive, tmp_path):
    """Betons of two prepares of one archive may differ in bytes; the arrays do not, and they are
    what a run records, so the resume is accepted. A record of the betons' digests (runs written
    before) still matches its own folder; other data is still refused."""
    import json

    from pipeline.manifest import beton_digests, read_manifest, same_data, split_digests
    from pipeline.prepare import prepare

    again = tmp_path / "again"
    prepare(str(synth_archive), again, check_counts=False, log=lambda m: None)
    first, second = read_manifest(prepared_dir), read_manifest(again)
    assert split_digests(first) == split_digests(second)
    run = tmp_path / "run"
    run_train(tiny_config(prepared_dir, run, epochs=1))
    assert json.loads((run / "config.json").read_text())["data"]["sha256"] == split_digests(first)
    resumed = run_train(tiny_config(again, run, epochs=2), resume=run, extra_epochs_to=2,
                        overrides={("data", "data_dir"): str(again)})
    assert resumed.epochs_done == 2
    assert same_data(beton_digests(first), first)
    assert not same_data({"train": "0" * 64, "test": "0" * 64}, first)


HOLD_READ_LOCK = """
import sys, time
sys.path.insert(0, {root!r})
from common.lock import reading_data
with reading_data({data!r}):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_prepare_force_refuses_while_a_training_reads_the_folder(synth_archive, tmp_path):
    """Two real processes: one holds the data folder's read lock as a training does; `prepare
    --force` into that folder is refused in one line and leaves every file as it was."""
    import hashlib

    from pipeline.prepare import prepare

    data = tmp_path / "data"
    prepare(str(synth_archive), data, check_counts=False, log=lambda m: None)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir()}
    reader = subprocess.Popen([sys.executable, "-c", HOLD_READ_LOCK.format(root=str(ROOT), data=str(data))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "holding"
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "prepare", "--source", str(synth_archive),
                               "--out", str(data), "--force"], capture_output=True, text=True, timeout=300)
    finally:
        reader.kill()
        reader.wait()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "the data of a training that is running now" in errors[0], proc.stderr
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir()} == before
    prepare(str(synth_archive), data, force=True, check_counts=False, log=lambda m: None)  # free again


def test_prepare_refuses_a_folder_without_room_before_writing(synth_archive, tmp_path, monkeypatch):
    import shutil as shutil_module

    from pipeline import prepare as prepare_module

    real = shutil_module.disk_usage
    monkeypatch.setattr(prepare_module.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=1 << 20))  # 1 MB free
    out = tmp_path / "data"
    with pytest.raises(UserError, match=r"has 1 MB free but prepare writes about \d+ MB"):
        prepare_module.prepare(str(synth_archive), out, check_counts=False, log=lambda m: None)
    assert not [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else True


def test_a_beton_writer_whose_workers_died_ends_instead_of_waiting_forever(monkeypatch):
    """FFCV's writer loop only sleeps while its count stays short; the sleep it is given raises
    once no worker has been alive for three looks (two: the loop may still be reading its last count)."""
    from pipeline import prepare as prepare_module

    alive: list[list[object]] = [[object()], [], [], []]
    monkeypatch.setattr(prepare_module.multiprocessing, "active_children", lambda: alive.pop(0))
    sleep = prepare_module._WorkersAlive()
    sleep(0)  # a worker is alive
    sleep(0)  # none, once
    sleep(0)  # twice: a writer that just finished may still be here
    with pytest.raises(UserError, match="lost its worker processes before writing every image"):
        sleep(0)
