"""`prepare --source IMAGE_FOLDER`: train/<class>/, test/<class>/ of any image size and mode.

Tiny generated folders (a few images per class): layout validation, the resize method, class
names from folder names, round-robin order with --limit, the manifest record, and bad input
failing with one line and writing nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import UserError
from pipeline import image_folder
from pipeline.manifest import read_arrays, read_manifest
from pipeline.prepare import prepare
from tests.test_prepare import assert_clean_error, assert_no_outputs, run_cli, snapshot

QUIET = {"log": lambda m: None}
CLASSES = ["cat", "dog", "zebra"]


def solid(size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, colour).convert(mode)


def make_folder(root: Path, per_class: dict[str, dict[str, int]] | None = None) -> Path:
    """root/{train,test}/<class>/ with varied sizes, modes and formats; class k's images are a
    solid colour (40k + i, ...), so labels can be checked from pixels."""
    per_class = per_class or {"train": {c: 3 for c in CLASSES}, "test": {c: 2 for c in CLASSES}}
    formats = [("png", "RGB", (32, 32)), ("jpg", "L", (48, 40)), ("bmp", "RGB", (20, 64)),
               ("webp", "RGB", (33, 33)), ("PNG", "RGBA", (64, 32)), ("jpeg", "P", (32, 32))]
    for split, counts in per_class.items():
        for k, cls in enumerate(sorted(counts)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(counts[cls]):
                ext, mode, size = formats[(i + k) % len(formats)]
                colour = (40 * k + i, 100, 200 - 30 * k)
                img = solid(size, colour, mode)
                img.save(folder / f"img{i:02d}.{ext}", **({"quality": 95} if ext in ("jpg", "jpeg") else {}))
    (root / "train" / CLASSES[0] / "notes.txt").write_text("ignored: not an image extension")
    (root / "train" / CLASSES[0] / ".hidden.png").write_bytes(b"ignored: hidden")
    return root


@pytest.fixture()
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "src")


def test_prepare_image_folder(folder, tmp_path):
    out = tmp_path / "data"
    m = prepare(str(folder), out, **QUIET).manifest
    assert m["source_kind"] == "image-folder" and m["classes"] == CLASSES
    assert m["official"] is False and m["image_method"] == image_folder.METHOD
    assert m["splits"]["train"]["count"] == 9 and m["splits"]["test"]["count"] == 6
    assert m["splits"]["train"]["per_class"] == [3, 3, 3]
    assert json.loads((out / "manifest.json").read_text()) == m
    images, labels = read_arrays(out, "train", read_manifest(out))
    assert images.shape == (9, 32, 32, 3) and images.dtype == np.uint8
    # round-robin: first image of each class, then the second, ...
    np.testing.assert_array_equal(labels, [0, 1, 2] * 3)
    # the first train image of class 0 is a 32x32 RGB png: kept bit for bit
    assert (images[0] == (0, 100, 200)).all()
    # the rest (other sizes, greyscale, RGBA, palette, jpeg): resized solid colours stay solid
    for img in images:
        assert np.ptp(img.reshape(-1, 3), axis=0).max() <= 8  # lossy jpeg/webp blocks


def test_resize_is_centre_crop_then_bicubic(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 100, 3), dtype=np.uint8)
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    want = np.asarray(Image.fromarray(pixels[:, 30:70]).resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(image_folder.load_image(path), want)


def test_limit_keeps_classes_balanced(folder, tmp_path):
    m = prepare(str(folder), tmp_path / "data", limit=4, **QUIET).manifest
    assert m["limit"] == 4
    assert m["splits"]["train"]["per_class"] == [2, 1, 1]
    assert m["splits"]["test"]["count"] == 4


BAD = {  # case → fragment of the one-line error
    "no_test": "lacks test/; an image folder needs train/ and test/",
    "class_only_in_train": "zebra are in train/ but not in test/",
    "class_only_in_test": "lion are in test/ but not in train/",
    "empty_class": "test/dog holds no images",
    "one_class": "at least two class folders",
    "no_classes": "no class folders",
    "corrupt_png": "img01.png is not a readable image",
    "truncated_jpg": "img00.jpg is not a readable image",
}


def make_bad(case: str, root: Path) -> Path:
    if case == "no_test":
        make_folder(root)
        for p in sorted((root / "test").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (root / "test").rmdir()
    elif case == "class_only_in_train":
        make_folder(root, {"train": {"cat": 1, "dog": 1, "zebra": 1}, "test": {"cat": 1, "dog": 1}})
    elif case == "class_only_in_test":
        make_folder(root, {"train": {"cat": 1, "dog": 1}, "test": {"cat": 1, "dog": 1, "lion": 1}})
    elif case == "empty_class":
        make_folder(root, {"train": {"cat": 1, "dog": 1}, "test": {"cat": 1, "dog": 0}})
    elif case == "one_class":
        make_folder(root, {"train": {"cat": 2}, "test": {"cat": 1}})
    elif case == "no_classes":
        (root / "train").mkdir(parents=True)
        (root / "test").mkdir()
    elif case == "corrupt_png":
        make_folder(root)
        (root / "train" / "dog" / "img01.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    elif case == "truncated_jpg":
        make_folder(root)
        path = root / "test" / "cat" / "img00.jpg"
        solid((200, 200), (1, 2, 3)).save(path, quality=90)
        path.write_bytes(path.read_bytes()[:300])
    return root


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_folder_in_process_writes_nothing(case, tmp_path):
    source = make_bad(case, tmp_path / "src")
    with pytest.raises(UserError, match=BAD[case]):
        prepare(str(source), tmp_path / "out", **QUIET)
    assert_no_outputs(tmp_path / "out")


def test_cli_corrupt_file_one_line_and_existing_data_kept(tmp_path, folder):
    out = tmp_path / "data"
    prepare(str(folder), out, **QUIET)
    before = snapshot(out)
    bad = make_bad("corrupt_png", tmp_path / "bad")
    proc = run_cli("--source", str(bad), "--out", str(out), "--force")
    line = assert_clean_error(proc, "img01.png", "not a readable image")
    assert str(bad / "train" / "dog" / "img01.png") in line
    assert snapshot(out) == before
    ok = run_cli("--source", str(folder), "--out", str(out))  # unchanged source: nothing to do
    assert ok.returncode == 0, ok.stderr
    assert snapshot(out) == before


def test_train_and_evaluate_on_an_image_folder_with_three_classes(folder, tmp_path):
    """Your own small dataset end to end: the model gets one output per class folder, and
    evaluation and predictions use the folder names."""
    from analysis.inspection.evaluate import evaluate
    from models.loading import load_run_model
    from tests.test_train import tiny_config
    from training.fit import train

    data = tmp_path / "data"
    prepare(str(folder), data, **QUIET)
    cfg = tiny_config(data, tmp_path / "run", epochs=1)
    cfg.data.subset, cfg.data.test_subset, cfg.optim.batch_size = None, None, 3
    result = train(cfg, log=lambda m: None, progress=False)
    config = result.run.read_config()
    assert config["train"]["model"]["num_classes"] == 3 and config["data"]["classes"] == CLASSES
    assert load_run_model(result.run, "last").linear.out_features == 3
    report = evaluate(result.run.path, which="last")
    assert report.classes == CLASSES and report.total == 6
