"""Hostile input across every command, in one process: the README's promise, checked as a sweep.

Each invocation below is something a user can type by mistake or on purpose: bad numbers, wrong
paths, files where folders are expected, truncated or corrupt .npz / .pt / .json / .csv / .tar.gz,
unknown choices, typer's own parse errors. Every one must be refused with a non-zero exit, exactly
one `error:` line and no traceback, and must leave every file that was there before untouched:
nothing added, removed or rewritten (size, mtime and inode after each case; sha256 of the whole
sandbox after all of them).

They run in-process through typer's CliRunner over `cli.app` (cli.py's `user_errors` maps a
UserError to `error: …` and typer.Exit(2), PartialFailure to exit 1; `_OneLineUsageErrors` does the
same for typer's parse errors), so the sweep costs one interpreter and one torch import, not ~80.
The sandbox is the working directory, so the defaults `runs/` and `data/` point into it (and are
absent there).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
from pipeline.manifest import read_manifest, split_digests
from tests import synth
from tests.test_analysis import fake_probs, make_run, write_test_arrays

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@dataclass
class Sandbox:
    root: Path
    digests: dict[str, str]  # relative path → sha256, taken when the sandbox was built


def _write_data(folder: Path) -> None:
    """A small prepared data folder (arrays and manifest, no betons: no FFCV import needed)."""
    from pipeline.cifar_source import CifarData, Split
    from pipeline.prepare import write_prepared

    data = CifarData(Split(*synth.make_split(200, seed=0)), Split(*synth.make_split(40, seed=1)), "synthetic", False)
    write_prepared(data, folder, betons=False)


def _damage_npz(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # flipped bytes inside the images member: the zip directory is intact, its CRC is not
        middle = len(raw) // 2
        path.write_bytes(raw[:middle] + bytes(255 - b for b in raw[middle:middle + 16]) + raw[middle + 16:])


def _digests(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as fh:
                out[path.relative_to(root).as_posix()] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def _stats(root: Path) -> dict[str, tuple[int, int, int]]:
    """Cheap per-case signature: every file's (size, mtime_ns, inode); a rewrite or an atomic
    replace changes it, an added or removed file changes the keys."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Sandbox:
    root = tmp_path_factory.mktemp("hostile")
    _write_data(root / "sdata")
    _, labels = write_test_arrays(root / "adata", n=30, seed=3)  # test.npz only: what the analysis reads
    run = make_run(root / "good" / "r", root / "adata", probs=fake_probs(labels, seed=3), labels=labels)

    for how in ("truncated", "empty", "crc"):
        write_test_arrays(root / f"npz-{how}", n=30, seed=3)
        _damage_npz(root / f"npz-{how}" / "test.npz", how)
    _write_data(root / "bad-manifest")
    (root / "bad-manifest" / "manifest.json").write_text('{"splits": {"train": ')
    _write_data(root / "short-train")
    _damage_npz(root / "short-train" / "train.npz", "truncated")

    # A run on sdata whose config records sdata's digests, so `train --resume` gets as far as its last.pt.
    bad = make_run(root / "bad-ckpt" / "r", root / "sdata")
    config = json.loads(bad.config_path.read_text())
    config["data"]["sha256"] = split_digests(read_manifest(root / "sdata"))
    bad.write_config(config)
    for name in ("best.pt", "last.pt"):
        raw = (root / "bad-ckpt" / "r" / name).read_bytes()
        (root / "bad-ckpt" / "r" / name).write_bytes(raw[: len(raw) // 3])
    (root / "bad-config").mkdir()
    (root / "bad-config" / "config.json").write_text('{"train": {"data": ')
    make_run(root / "bad-preds" / "r", root / "adata", probs=fake_probs(labels, seed=3), labels=labels)
    raw = (root / "bad-preds" / "r" / "predictions_best.npz").read_bytes()
    (root / "bad-preds" / "r" / "predictions_best.npz").write_bytes(raw[:200])
    (root / "not-a-run").mkdir()
    (root / "not-a-run" / "notes.txt").write_text("a user's folder\n")

    (root / "afile").write_text("a user's file, not a folder\n")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "photo.png")
    (root / "notes.png").write_text("text with an image name\n")
    Image.new("RGB", (8, 8)).save(root / "anim.gif")
    (root / "text.tar.gz").write_text("not an archive\n" * 50)
    (root / "plain.tar.gz").write_bytes(gzip.compress(b"not a tar\n" * 100))
    archive = synth.write_archive(root / "good.tar.gz", synth.make_members(n_train=50, n_test=10))
    raw = archive.read_bytes()
    (root / "half.tar.gz").write_bytes(raw[: len(raw) // 2])
    archive.unlink()
    (root / "report-dir").mkdir()
    (root / "report-dir" / "keep.txt").write_text("kept\n")
    assert run.path.is_dir()
    return Sandbox(root, _digests(root))


# (id, argv, a fragment the one error line must contain). Paths are relative to the sandbox.
CASES: list[tuple[str, list[str], str]] = [
    # ---- typer's own refusals: one line too
    ("unknown-command", ["trian"], "No such command 'trian'"),
    ("unknown-option", ["train", "--frob"], "No such option: --frob"),
    ("epochs-not-an-int", ["train", "--epochs", "1e23"], "--epochs"),
    ("batch-not-an-int", ["train", "--batch-size", "many"], "--batch-size"),
    ("predict-no-path", ["predict"], "Missing argument 'PATH'"),
    ("export-no-format", ["export", "good/r"], "Missing option '--format'"),
    # ---- prepare
    ("prepare-missing-source", ["prepare", "--source", "nope.tar.gz", "--out", "new-data"], "does not exist"),
    ("prepare-text-archive", ["prepare", "--source", "text.tar.gz", "--out", "new-data"],
     "neither gzip, bzip2 nor xz data"),
    ("prepare-gzip-not-tar", ["prepare", "--source", "plain.tar.gz", "--out", "sdata", "--force"],
     "gzip-compressed, but what it holds is not a tar archive"),
    ("prepare-truncated", ["prepare", "--source", "half.tar.gz", "--out", "sdata", "--force"], "truncated"),
    ("prepare-image-as-source", ["prepare", "--source", "photo.png", "--out", "new-data"],
     "is not a readable .tar.gz archive"),
    ("prepare-out-is-a-file", ["prepare", "--source", "half.tar.gz", "--out", "afile"], "is a file"),
    ("prepare-limit-0", ["prepare", "--limit", "0", "--out", "new-data"], "--limit must be at least 1"),
    # ---- train: numbers, choices, paths, damaged data
    ("train-epochs-0", ["train", "--epochs", "0"], "--epochs must be at least 1"),
    ("train-epochs-huge", ["train", "--epochs", "100000000000000000000000"], "--epochs must be at most 10,000"),
    ("train-batch-huge", ["train", "--batch-size", "1000000"], "--batch-size must be at most"),
    ("train-lr-nan", ["train", "--lr", "nan"], "--lr must be a finite number"),
    ("train-lr-negative", ["train", "--lr", "-1"], "--lr must be positive"),
    ("train-momentum-2", ["train", "--momentum", "2"], "--momentum must be in [0, 1)"),
    ("train-seed-negative", ["train", "--seed", "-1"], "--seed must be between 0 and"),
    ("train-seed-huge", ["train", "--seed", "4294967296"], "--seed must be between 0 and"),
    ("train-subset-0", ["train", "--subset", "0"], "--subset must be at least 1"),
    ("train-val-negative", ["train", "--val", "-1"], "--val must be >= 0"),
    ("train-workers-0", ["train", "--workers", "0"], "--workers must be at least 1"),
    ("train-pad-99", ["train", "--pad", "99"], "--pad must be between 0 and 16"),
    ("train-fill-300", ["train", "--fill", "300,0,0"], "--fill must be three values in 0-255"),
    ("train-fill-words", ["train", "--fill", "red"], "--fill must be 'mean' or three integers"),
    ("train-norm", ["train", "--norm", "instance"], "unknown norm 'instance'"),
    ("train-loader", ["train", "--loader", "dali"], "--loader must be one of"),
    ("train-schedule", ["train", "--schedule", "cosine"], "--schedule must be one of"),
    ("train-border", ["train", "--border", "wrap"], "--border must be one of"),
    ("train-recipe", ["train", "--recipe", "best"], "unknown recipe 'best'"),
    ("train-device", ["train", "--data", "sdata", "--run", "new-run", "--device", "tpu"], "unknown --device 'tpu'"),
    ("train-run-is-a-file", ["train", "--data", "sdata", "--run", "afile"], "is a file, not a folder"),
    ("train-run-not-a-run", ["train", "--data", "sdata", "--run", "not-a-run"], "notes.txt"),
    ("train-no-data", ["train", "--data", "missing-data", "--run", "new-run"], "no prepared data in missing-data/"),
    ("train-bad-manifest", ["train", "--data", "bad-manifest", "--run", "new-run"], "is not a valid manifest"),
    ("train-resume-missing", ["train", "--resume", "no-such-run"], "no-such-run"),
    ("train-run-and-resume", ["train", "--run", "new-run", "--resume", "good/r"], "not both"),
    ("train-resume-recipe-flag", ["train", "--resume", "good/r", "--lr", "0.1"], "--lr cannot change when resuming"),
    # ---- compare and summary
    ("compare-norms", ["compare", "--norms", "batch,instance"], "unknown normalisation 'instance'"),
    ("compare-seeds", ["compare", "--seeds", "0,one"], "--seeds must be a comma-separated list of integers"),
    ("compare-runs-not-a-run", ["compare", "--runs", "not-a-run"], "is not a run directory"),
    ("compare-epochs-huge", ["compare", "--epochs", "20000"], "--epochs must be at most 10,000"),
    ("summary-norm", ["summary", "--norm", "foo"], "unknown norm 'foo'"),
    ("summary-shortcut-norm", ["summary", "--shortcut-norm", "foo"], "unknown --shortcut-norm 'foo'"),
    ("summary-recipe", ["summary", "--recipe", "nope"], "unknown recipe 'nope'"),
    # ---- explain / evaluate: flags, paths, damaged files
    ("explain-layer-9", ["explain", "good/r", "--layer", "9"], "--layer must be one of 1, 2, 3, 4"),
    ("explain-method", ["explain", "good/r", "--method", "gradcamm"], "unknown CAM method 'gradcamm'"),
    ("explain-pick", ["explain", "good/r", "--pick", "best"], "unknown --pick 'best'"),
    ("explain-target", ["explain", "good/r", "--target", "guess"], "unknown --target 'guess'"),
    ("explain-which", ["explain", "good/r", "--which", "first"], "choose 'best' or 'last'"),
    ("explain-count-0", ["explain", "good/r", "--count", "0"], "--count must be at least 1"),
    ("explain-seed-huge", ["explain", "good/r", "--seed", "100000000000000000000000"], "--seed must be between"),
    ("explain-no-runs", ["explain"], "no trained run found under runs/"),
    ("explain-run-is-a-file", ["explain", "--run", "afile"], "is a file, not a run directory"),
    ("explain-data-missing", ["explain", "good/r", "--data", "gone"], "data folder gone"),
    ("explain-npz-empty", ["explain", "good/r", "--data", "npz-empty"], "is truncated or corrupt (EOFError"),
    ("evaluate-npz-truncated", ["evaluate", "good/r", "--data", "npz-truncated"], "is truncated or corrupt (BadZipFile"),
    ("evaluate-npz-crc", ["evaluate", "--run", "good/r", "--data", "npz-crc"], "is truncated or corrupt (BadZipFile"),
    ("evaluate-bad-checkpoint", ["evaluate", "bad-ckpt/r", "--recompute"], "is not a loadable checkpoint"),
    ("evaluate-bad-config", ["evaluate", "bad-config"], "config.json"),
    ("evaluate-bad-predictions", ["evaluate", "bad-preds/r"], "predictions_best.npz is damaged"),
    ("evaluate-not-a-run", ["evaluate", "not-a-run"], "is not a run directory (no config.json)"),
    ("evaluate-run-twice", ["evaluate", "good/r", "--run", "bad-ckpt/r"], "the run is given twice"),
    ("train-resume-bad-checkpoint", ["train", "--resume", "bad-ckpt/r", "--loader", "torch"], "last.pt is not a loadable checkpoint"),
    ("train-resume-other-data", ["train", "--resume", "good/r", "--data", "sdata"], "differs from the data"),
    # ---- predict
    ("predict-nothing-readable", ["predict", "notes.png", "--run", "good/r"], "the file could not be read"),
    ("predict-gif-only", ["predict", "anim.gif", "--run", "good/r"], "the file could not be read"),
    ("predict-missing-file", ["predict", "nope.png", "--run", "good/r"], "no image files found in nope.png"),
    ("predict-top-k-0", ["predict", "photo.png", "--run", "good/r", "--top-k", "0"], "--top-k must be at least 1"),
    ("predict-top-k-11", ["predict", "photo.png", "--run", "good/r", "--top-k", "11"], "--top-k must be at most 10"),
    ("predict-layer-without-cam", ["predict", "photo.png", "--run", "good/r", "--layer", "3"], "add --cam"),
    ("predict-json-is-a-folder", ["predict", "photo.png", "--run", "good/r", "--json", "report-dir"], "is a folder"),
    ("predict-cam-out-is-a-file", ["predict", "photo.png", "--run", "good/r", "--cam", "--out", "afile"], "is a file"),
    ("predict-run-is-a-file", ["predict", "photo.png", "--run", "afile"], "is a file, not a run directory"),
    # ---- export
    ("export-format", ["export", "good/r", "--format", "tflite"], "unknown --format 'tflite'"),
    ("export-out-is-a-folder", ["export", "good/r", "--format", "onnx", "--out", "report-dir"], "is a folder"),
    ("export-out-below-a-file", ["export", "good/r", "--format", "onnx", "--out", "afile/model.onnx"],
     "lies below the file afile"),
    ("export-npz-truncated", ["export", "--run", "good/r", "--format", "onnx", "--data", "npz-truncated"],
     "is truncated or corrupt (BadZipFile"),
    ("export-bad-checkpoint", ["export", "bad-ckpt/r", "--format", "torchscript"], "is not a loadable checkpoint"),
    # ---- report
    ("report-no-runs", ["report"], "no trained run found under runs/"),
    ("report-missing", ["report", "nope"], "does not exist"),
    ("report-file", ["report", "--run", "afile"], "is a file, not a run directory"),
    ("report-not-a-run", ["report", "not-a-run"], "is not a run directory (no config.json) nor a compare folder"),
    ("report-no-epoch", ["report", "good/r"], "has not finished an epoch yet"),
    ("report-out-is-a-folder", ["report", "good/r", "--out", "report-dir"], "is a folder"),
    # ---- bench
    ("bench-loader-batch-0", ["bench", "loader", "--batch-size", "0"], "--batch-size must be at least 1"),
    ("bench-loader-data-file", ["bench", "loader", "--data", "afile"], "--data afile is a file"),
    ("bench-train-steps-0", ["bench", "train", "--steps", "0"], "--steps must be at least 1"),
    ("bench-train-device", ["bench", "train", "--device", "tpu"], "unknown --device 'tpu'"),
    ("bench-train-sides", ["bench", "train", "--sides", "24,40"], "--sides must be a comma-separated list of image sides"),
    ("bench-gpu-norms", ["bench", "gpu", "--norms", "x"], "unknown normalisation 'x'"),
    ("bench-predict-images-0", ["bench", "predict", "--images", "0"], "--images must be at least 1"),
    ("bench-startup-data-file", ["bench", "startup", "--data", "afile"], "--data afile is a file"),
    ("bench-prepare-missing", ["bench", "prepare", "--source", "nope.tar.gz"], "--source nope.tar.gz does not exist"),
]


def test_the_sweep_covers_every_command_with_enough_cases():
    commands = {argv[0] if argv[0] != "bench" else f"bench {argv[1]}" for _, argv, _ in CASES}
    assert len(CASES) >= 40
    reliability = (Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md").read_text()
    assert f"{len(CASES)} hostile invocations" in reliability  # the count the docs give is this sweep's
    assert {"prepare", "train", "compare", "summary", "explain", "evaluate", "predict", "export", "report",
            "bench loader", "bench train", "bench gpu", "bench predict", "bench startup", "bench prepare"} <= commands


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_hostile_invocation_is_one_line_and_changes_nothing(sandbox, monkeypatch, argv, fragment):
    monkeypatch.chdir(sandbox.root)
    before = _stats(sandbox.root)
    result = CliRunner().invoke(cli.app, argv)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"{type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in result.output
    assert len(errors) == 1, result.output
    assert fragment in errors[0], errors[0]
    after = _stats(sandbox.root)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}


def test_every_file_in_the_sandbox_is_byte_identical_after_the_sweep(sandbox):
    assert _digests(sandbox.root) == sandbox.digests
    assert not [p for p in sandbox.root.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((sandbox.root / "good" / "r" / "config.json").read_text())["data"]["classes"]
    assert np.load(sandbox.root / "adata" / "test.npz")["images"].shape == (30, 32, 32, 3)
