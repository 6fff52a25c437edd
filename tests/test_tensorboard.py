"""training/tensorboard_log.py and analysis/inspection/tensorboard_images.py, read back with TensorBoard's own reader.

The reader (EventAccumulator, purge_orphaned_data on, as TensorBoard runs it) is what decides what a
user sees, so the resume test checks through it that no step appears twice.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.tensorboard_log import SCALARS, TensorBoardLog, tb_dir

ROOT = Path(__file__).resolve().parents[1]


def rows(epochs: range, offset: float = 0.0) -> list[dict]:
    return [{"epoch": e, "train_loss": 2.3 - 0.1 * e + offset, "train_acc": 0.1 + 0.05 * e,
             "test_loss": 2.2 - 0.1 * e + offset, "test_acc": 0.12 + 0.04 * e, "lr": 0.03 / e,
             "seconds": 60.0 + e, "img_per_s": 50.0 + e} for e in epochs]


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(rs: list[dict]) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(r["epoch"], r[key]) for r in rs] for key, tag in SCALARS.items()}


def assert_scalars(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in want[tag]], rtol=1e-6, err_msg=tag)


def test_scalars_equal_the_rows(tmp_path):
    rs = rows(range(1, 4))
    log = TensorBoardLog(tmp_path)
    for r in rs:
        log.epoch({**r, "extra": "ignored"})
        # Flushed each epoch: readable before close, as a live TensorBoard would read it.
        assert read_scalars(tb_dir(tmp_path))["loss/train"][-1][0] == r["epoch"]
    log.close()
    assert_scalars(read_scalars(tb_dir(tmp_path)), expected(rs))


def test_resume_has_no_duplicate_steps(tmp_path):
    """Epochs 1-3 logged, the run resumed from the epoch-2 checkpoint: epoch 3 is trained again."""
    first = rows(range(1, 4))
    with TensorBoardLog(tmp_path) as log:
        for r in first:
            log.epoch(r)
    again = rows(range(3, 6), offset=0.5)  # different values, so a stale epoch 3 would show
    with TensorBoardLog(tmp_path) as log:
        for r in again:
            log.epoch(r)
    assert len(list(tb_dir(tmp_path).glob("events.out.tfevents.*"))) == 2
    assert_scalars(read_scalars(tb_dir(tmp_path)), expected(first[:2] + again))


def test_resume_in_the_same_second_reads_in_order(tmp_path, monkeypatch):
    """Two writers of one process, opened within a second, whose file counters are 9 and 10: by
    name "10" sorts before "9", which made TensorBoard read the resumed file first and purge it."""
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    test_resume_has_no_duplicate_steps(tmp_path)
    names = sorted(p.name for p in tb_dir(tmp_path).glob("events.out.tfevents.*"))
    assert [n.rsplit(".", 1)[-1] for n in names] == ["9", "10"]


def test_nothing_written_until_the_first_epoch(tmp_path):
    TensorBoardLog(tmp_path).close()
    assert not tb_dir(tmp_path).exists()


def test_figures_as_images(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from analysis.inspection.tensorboard_images import add_figures

    rng = np.random.default_rng(0)
    paths = []
    for name, size in (("misclassified", (90, 60)), ("gradcam_layer3", (40, 70))):
        p = tmp_path / "analysis" / f"{name}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    with TensorBoardLog(tmp_path) as log:
        log.epoch(rows(range(1, 2))[0])
    folder = add_figures(tmp_path, paths, step=1)
    acc = EventAccumulator(str(folder), size_guidance={"images": 0})
    acc.Reload()
    assert sorted(acc.Tags()["images"]) == ["explain/gradcam_layer3", "explain/misclassified"]
    img = acc.Images("explain/misclassified")[0]
    assert (img.step, img.height, img.width) == (1, 90, 60)
    import io

    decoded = np.asarray(Image.open(io.BytesIO(img.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(decoded, np.asarray(Image.open(paths[0]).convert("RGB")))
    # The training scalars are untouched by the images' writer.
    assert read_scalars(tb_dir(tmp_path))["loss/train"] == [(1, pytest.approx(2.2))]


def test_image_helper_stays_clear_of_training():
    script = "\n".join(["import sys", f"sys.path.insert(0, {str(ROOT)!r})", "import analysis.inspection.tensorboard_images",
                        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ffcv', 'training'))",
                        "assert not bad, bad", "print('ok')"])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
