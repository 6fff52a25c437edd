"""Issue 22's smaller defects, one regression test each: a recursive glob over a symlink loop, a
damaged test.npz, unknown norms in `summary`, the run given as RUN or --run, absurd integer flags,
a run path that is a file, the archive message, prepare's progress off a terminal, GIF in folders,
"1 epoch", and the computed defaults in `train --help`.

CLI tests run in-process through typer's CliRunner over cli.app: cli.py's `user_errors` turns a
UserError into `error: …` and typer.Exit(2), which the runner reports as the exit code.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
from common.config import MAX_EPOCHS, TrainConfig
from common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def invoke(*args: str):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def one_error(result) -> str:
    """The single `error:` line of a refused invocation (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (10, 20, 30)).save(path)
    return path


# ---- item 8: `predict 'L/**'` over a symlink loop -------------------------------------------------

def test_a_recursive_glob_does_not_follow_symlinked_folders(tmp_path):
    loop = tmp_path / "L"
    png(loop / "a.png")
    png(loop / "sub" / "b.png")
    (loop / "self").symlink_to(".")  # three ways back up: glob.glob('L/**') walks 3^40 paths
    (loop / "again").symlink_to("../L")
    (loop / "sub" / "up").symlink_to("..")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from analysis.model_use.image_files import collect_images
        got = collect_images(["L/**", "L/**/*.png"])
        print(sorted(p.as_posix() for p in got.files))
    """)
    # In a child process with a deadline: before the fix this never returned.
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['L/a.png', 'L/sub/b.png']"

    from analysis.model_use.image_files import expand_glob

    os.chdir(tmp_path)
    try:
        assert expand_glob("L/**/*.png") == ["L/a.png", "L/sub/b.png"]
        # A part that names a symlinked folder is still followed, one level: what was asked for.
        assert "L/self/a.png" in expand_glob("L/*/*.png")
        assert expand_glob(str(tmp_path / "L" / "**" / "b.png")) == [str(tmp_path / "L" / "sub" / "b.png")]
    finally:
        os.chdir(ROOT)


# ---- GIF: refused with the same line whether named or found in a folder -----------------------------

def test_a_gif_is_refused_the_same_way_named_or_in_a_folder(tmp_path):
    from analysis.model_use.image_files import ImageReadError, collect_images, read_image, read_many

    png(tmp_path / "photos" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "b.gif")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    got = collect_images([tmp_path / "photos"])
    assert [p.name for p in got.files] == ["a.png", "b.gif"]  # the GIF used to be "without an image extension"
    assert got.ignored == 1  # only the text file
    with pytest.raises(ImageReadError) as named:
        read_image(tmp_path / "photos" / "b.gif")
    (_, in_folder), = [r for p, r in zip(got.files, read_many(got.files)) if p.name == "b.gif"]
    assert in_folder == str(named.value) == "is a GIF file; supported formats are PNG, JPEG, BMP and WebP"


# ---- item 10: a truncated or corrupt test.npz ----------------------------------------------------

def damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bad-crc":  # inside the images member: the zip directory is intact
        data = bytearray(raw)
        data[len(raw) // 2: len(raw) // 2 + 16] = bytes(255 - b for b in data[len(raw) // 2: len(raw) // 2 + 16])
        path.write_bytes(bytes(data))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "empty", "bad-crc"])
def test_a_damaged_test_npz_is_corrupt_data_with_the_prepare_hint(tmp_path, how):
    from pipeline.manifest import read_test_arrays

    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "test.npz", images=images, labels=np.arange(20) % 10)
    damage(tmp_path / "test.npz", how)
    with pytest.raises(UserError) as info:
        read_test_arrays(tmp_path)  # BadZipFile / EOFError escaped it before
    message = str(info.value)
    assert "is truncated or corrupt" in message and f"prepare --out {tmp_path} --force" in message
    assert "\n" not in message


def test_the_commands_that_read_test_npz_say_so_in_one_line(tmp_path):
    from tests.test_analysis import make_run, write_test_arrays

    write_test_arrays(tmp_path / "data", n=20)
    run = make_run(tmp_path / "runs" / "r", tmp_path / "data")
    damage(tmp_path / "data" / "test.npz", "truncated")
    for command in (["evaluate"], ["explain"], ["export", "--format", "onnx"]):
        line = one_error(invoke(*command, run.path))
        assert "test.npz is truncated or corrupt (BadZipFile" in line and "--force" in line, (command, line)
    assert not (run.path / "export").exists() and not (run.path / "analysis").exists()


# ---- item 11: summary --norm foo / --shortcut-norm foo ---------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--norm", "foo"], "unknown norm 'foo'; choose one of layer, group, batch"),
    (["--shortcut-norm", "foo"], "unknown --shortcut-norm 'foo'; choose same, layer, group, batch"),
    (["--norm", "group", "--groups", "7"], "--groups must divide every stage's channels (64, 128, 256, 512"),
])
def test_summary_refuses_unknown_norms_in_one_line(args, words):
    result = invoke("summary", *args)
    assert words in one_error(result)  # a KeyError traceback before
    assert result.stdout == ""  # nothing described before the refusal


# ---- item 13: the run as RUN or --run ----------------------------------------------------------------

@pytest.mark.parametrize("command", [["explain"], ["evaluate"], ["export", "--format", "onnx"], ["report"]])
def test_the_run_taking_commands_take_the_run_both_ways(tmp_path, command):
    missing = tmp_path / "no-such-run"
    positional = one_error(invoke(*command, missing))
    option = one_error(invoke(*command, "--run", missing))
    assert positional == option and "does not exist" in positional  # both spellings reach the command
    both = one_error(invoke(*command, missing, "--run", tmp_path / "other"))
    assert "the run is given twice" in both and "as RUN or as --run RUN" in both


def test_report_without_runs_names_a_spelling_that_works(tmp_path, monkeypatch):
    from tests.test_analysis import fake_probs, make_run, write_test_arrays

    monkeypatch.chdir(tmp_path)
    line = one_error(invoke("report"))
    assert "no trained run found under runs/" in line and "--run DIR" in line
    _, labels = write_test_arrays(tmp_path / "data", n=20)
    run = make_run(tmp_path / "elsewhere" / "r", tmp_path / "data", probs=fake_probs(labels), labels=labels)
    for args in (["evaluate", "--run", run.path], ["evaluate", run.path]):
        result = invoke(*args)  # the spelling the message names works for every run-taking command
        assert result.exit_code == 0, result.output
        assert "overall" in result.stdout


# ---- absurd integers -----------------------------------------------------------------------------

@pytest.mark.parametrize("section, field, value, words", [
    ("optim", "epochs", 10**23, f"--epochs must be at most {MAX_EPOCHS:,}"),
    ("optim", "batch_size", 10**6, "--batch-size must be at most 65,536"),
    ("optim", "max_steps", 10**12, "--max-steps must be at most"),
    ("optim", "warmup_steps", 10**12, "--warmup-steps must be at most"),
    ("optim", "plateau_patience", 10**9, "--plateau-patience must be at most"),
    ("data", "subset", 10**20, "--subset must be at most"),
    ("data", "test_subset", 10**20, "--test-subset must be at most"),
    ("data", "val", 10**20, "--val must be at most"),
    ("data", "workers", 10**6, "--workers must be at most 1,024"),
    ("run", "seed", -1, "--seed must be between 0 and 4,294,967,295"),
    ("run", "seed", 2**40, "--seed must be between 0 and 4,294,967,295"),
])
def test_absurd_integer_settings_are_refused(section, field, value, words):
    cfg = TrainConfig()
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(UserError, match=words.replace("+", r"\+")):
        cfg.validate()


def test_cli_refuses_absurd_epochs_before_creating_anything(tmp_path):
    run = tmp_path / "run"
    line = one_error(invoke("train", "--epochs", "100000000000000000000000", "--run", run, "--data", tmp_path))
    assert f"--epochs must be at most {MAX_EPOCHS:,}" in line
    assert not run.exists()
    line = one_error(invoke("train", "--epochs", "1e23", "--run", run))  # typer's own refusal, also one line
    assert "--epochs" in line and "see " in line and "train --help" in line
    line = one_error(invoke("explain", "--seed", str(10**23), "--run", tmp_path))
    assert "--seed must be between 0 and 4,294,967,295" in line  # a ValueError from torch before


@pytest.mark.parametrize("args, words", [
    (["bench", "loader", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["bench", "loader", "--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["bench", "train", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["bench", "predict", "--images", "0"], "--images must be at least 1, got 0"),
    (["bench", "gpu", "--epochs", "100000"], "--epochs must be at most 10,000"),
])
def test_bench_counts_are_checked_before_any_timing(args, words):
    assert words in one_error(invoke(*args))  # ZeroDivisionError after minutes of timing before


# ---- a path that is a file where a folder is expected -------------------------------------------------

def test_a_run_or_out_that_is_a_file_is_one_clear_sentence(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for command in (["explain"], ["evaluate"], ["predict", "x.png", "--run"]):
        line = one_error(invoke(*command, afile))
        assert f"{afile} is a file, not a run directory" in line  # said "does not exist" before
    from tests.test_analysis import make_run, write_test_arrays

    write_test_arrays(tmp_path / "data", n=20)
    run = make_run(tmp_path / "r", tmp_path / "data")
    png(tmp_path / "img.png")
    for out, words in ((afile, "is a file"), (afile / "sub", f"lies below the file {afile}")):
        line = one_error(invoke("predict", tmp_path / "img.png", "--run", run.path, "--cam", "--out", out))
        assert f"--out {out} {words}" in line  # "cannot write …: File exists" before
    line = one_error(invoke("export", run.path, "--format", "onnx", "--out", afile / "model.onnx"))
    assert f"lies below the file {afile}" in line  # "cannot write …: File exists" after the export, before
    assert afile.read_text() == "mine"


# ---- prepare: the archive message, and no progress redraws in a log ------------------------------------

@pytest.mark.parametrize("content, why", [
    (b"not an archive\n" * 40, "it is neither gzip, bzip2 nor xz data, nor a plain tar file"),
    (gzip.compress(b"hello, not a tar\n" * 100), "it is gzip-compressed, but what it holds is not a tar archive"),
    (b"", "the file is empty"),
], ids=["text", "gzip-not-tar", "empty"])
def test_an_unreadable_archive_is_described_in_a_whole_sentence(tmp_path, content, why):
    from pipeline.cifar_source import read_cifar10

    (tmp_path / "a.tar.gz").write_bytes(content)
    with pytest.raises(UserError) as info:
        read_cifar10(tmp_path / "a.tar.gz")
    assert str(info.value) == (f"{tmp_path / 'a.tar.gz'} is not a readable .tar.gz archive ({why}); it may be "
                               "truncated or corrupt: download it again")  # was cut mid-word at 160 characters


def test_a_truncated_archive_says_its_data_ends_early(tmp_path, synth_archive):
    from pipeline.cifar_source import read_cifar10

    raw = synth_archive.read_bytes()
    (tmp_path / "half.tar.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match=r"\(its gzip data ends early or is damaged\); it may be truncated"):
        read_cifar10(tmp_path / "half.tar.gz")


def test_prepare_writes_no_progress_redraws_off_a_terminal(tmp_path, capfd):
    from pipeline.manifest import ffcv_missing

    if ffcv_missing():
        pytest.skip("FFCV does not import: no beton, no bar")
    from pipeline.cifar_source import Split
    from pipeline.prepare import write_beton
    from tests import synth

    write_beton(tmp_path / "t.beton", Split(*synth.make_split(200, seed=0)), desc="test.beton", workers=1)
    err = capfd.readouterr().err
    assert "\r" not in err and "test.beton" not in err  # a tqdm bar redrawn with \r before


# ---- "1 epochs", and the computed defaults in train --help -------------------------------------------

def test_one_epoch_is_singular(tmp_path, monkeypatch):
    import training.fit

    def fake_train(cfg, **kwargs):
        return SimpleNamespace(main=True, decided_on="last epoch", best_epoch=1, best_acc=0.5, best_test_acc=0.5,
                               final_test_acc=0.5, final_test_acc_tta=0.55, tta_name="flip + 1-px shift TTA", epochs_done=1, seconds=3.0,
                               run=SimpleNamespace(path=tmp_path))

    monkeypatch.setattr(training.fit, "train", fake_train)
    result = invoke("train", "--epochs", "1", "--run", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "; 1 epoch in " in result.stdout and "1 epochs" not in result.stdout
    assert "final test accuracy 50.00% (55.00% with flip + 1-px shift TTA);" in result.stdout  # --tta's number beside


def test_help_states_the_rule_of_each_computed_default():
    from cli_flags import FLAGS, _default_text

    texts = {flag.name: _default_text(flag) for flag in FLAGS}
    assert not [name for name, text in texts.items() if "none" in text.split("; ")[0]]
    assert texts["fill"] == "mean, the train-mean pixel"
    assert texts["val"].startswith("5,000, or a tenth of the training images") and "0 with --recipe fast" in texts["val"]
    assert texts["amp"] == "on for CUDA and for CPUs with native bf16, off elsewhere"
    assert texts["channels_last"].startswith("on, except NCHW")
    assert texts["workers"] == "the cores this process may use"
    help_text = " ".join(invoke("train", "--help").stdout.replace("│", " ").split())
    assert "(default: none)" not in help_text and "(default: the cores this process may use)" in help_text

