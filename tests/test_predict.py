"""`predict`: user image files in, top-k classes out; the reading rule; bad files; Grad-CAM figures.

Runs are the synthetic run directories the analysis tests build (tests/test_analysis.py: an
untrained, seeded ResNet-18 behind the production RunDir / loading code), so "equals evaluate"
compares two real code paths over the same checkpoint.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.inspection.evaluate import evaluate
from analysis.model_use.image_files import ImageReadError, collect_images, read_image
from analysis.model_use.predict import PartialFailure, format_table, predict
from cli_model_use import predict_command
from common.errors import UserError
from pipeline.cifar_source import CLASSES
from tests.test_analysis import make_run, write_test_arrays

ROOT = Path(__file__).resolve().parents[1]
N = 40


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run without saved predictions (so evaluate must run the model) and its test images as PNGs."""
    base = tmp_path_factory.mktemp("predict")
    images, labels = write_test_arrays(base / "data", n=N, seed=7)
    run = make_run(base / "runs" / "r", base / "data")
    pngs = base / "pngs"
    pngs.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(pngs / f"test_{i:03d}.png")
    return run, images, labels, pngs


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


# ---- agreement with evaluate -----------------------------------------------------------------------

def test_predictions_on_test_pngs_equal_evaluate(setup, tmp_path):
    run, images, _, pngs = setup
    out_json = tmp_path / "p.json"
    result = predict([pngs], run.path, top_k=3, json_path=out_json)
    assert [p.file.name for p in result.predictions] == [f"test_{i:03d}.png" for i in range(N)]
    # 32×32 PNGs pass through untouched: the model sees the test.npz pixels.
    np.testing.assert_array_equal(read_image(pngs / "test_005.png")[0], images[5])

    ev = evaluate(run.path, which="best", recompute=True)
    saved = run.read_predictions("best")
    got = np.stack([p.probs for p in result.predictions])
    np.testing.assert_array_equal(got.argmax(1), saved.preds)
    np.testing.assert_allclose(got, saved.probs, atol=1e-5)
    assert ev.total == N

    data = json.loads(out_json.read_text())
    assert data["checkpoint"] == "best.pt" and data["classes"] == list(CLASSES) and data["failed"] == []
    first = data["images"][0]
    assert first["file"] == str(pngs / "test_000.png") and first["size"] == [32, 32]
    assert [t["class"] for t in first["top"]] == [CLASSES[c] for c in np.argsort(-saved.probs[0])[:3]]
    assert first["predicted"] == CLASSES[saved.preds[0]]
    assert first["top"][0]["prob"] == pytest.approx(float(saved.probs[0].max()), abs=1e-5)

    table = format_table(result).splitlines()
    assert table[0].split() == ["file", "top-1", "top-2", "top-3"]
    assert table[1].startswith(str(pngs / "test_000.png")) and CLASSES[saved.preds[0]] in table[1]


# ---- the reading rule -----------------------------------------------------------------------------

def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16, :, :] = (200, 10, 10, 255)  # opaque red top half
    rgba[16:, :16] = (0, 0, 255, 0)  # fully transparent: its hidden blue must not show
    rgba[16:, 16:] = (0, 0, 0, 128)  # half-transparent black over white -> mid grey
    got, info = read_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    assert info.mode == "RGBA"
    assert (got[:16] == (200, 10, 10)).all()
    assert (got[16:, :16] == 255).all()
    assert np.abs(got[16:, 16:].astype(int) - 127).max() <= 1


def test_greyscale_and_palette_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    got, info = read_image(save(Image.fromarray(grey, "L"), tmp_path / "g.png"))
    assert info.mode == "L" and got.shape == (32, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], grey)

    rgb = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    got, info = read_image(save(pal, tmp_path / "p.png"))
    assert info.mode == "P"
    np.testing.assert_array_equal(got, np.asarray(pal.convert("RGB")))

    pal.info["transparency"] = 0  # palette entry 0 transparent -> white
    got, _ = read_image(save(pal, tmp_path / "pt.png", transparency=0))
    idx = np.asarray(pal)
    assert (got[idx == 0] == 255).all() and (idx == 0).any()

    deep = Image.fromarray(np.full((32, 32), 65535, np.uint16))  # 16-bit greyscale PNG
    got, _ = read_image(save(deep, tmp_path / "d.png"))
    assert (got == 255).all()


@pytest.mark.parametrize("fmt, ext, tol", [("PNG", "png", 0), ("JPEG", "jpg", 12), ("BMP", "bmp", 0),
                                           ("WEBP", "webp", 12)])
def test_large_non_square_is_centre_cropped(tmp_path, fmt, ext, tol):
    """1200×700: the centre 700×700 square has a red left half and a blue right half; the 250 px
    bands either side are green and must vanish; left stays left (no flip or transpose)."""
    w, h = 1200, 700
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = (0, 200, 0)
    x0 = (w - h) // 2
    arr[:, x0:x0 + h // 2] = (220, 20, 20)
    arr[:, x0 + h // 2:x0 + h] = (20, 20, 220)
    kw = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    got, info = read_image(save(Image.fromarray(arr), tmp_path / f"big.{ext}", **kw))
    assert info.size == (w, h) and info.format == fmt and got.shape == (32, 32, 3)
    g = got.astype(int)
    # Column 0 is left out: a JPEG decoded at 1/4 scale (draft) puts the crop edge on the reduced
    # grid, up to half a reduced pixel (2 source pixels here) into the green band.
    assert np.abs(g[:, 1:14] - (220, 20, 20)).max() <= tol  # away from the red/blue seam
    assert np.abs(g[:, 18:] - (20, 20, 220)).max() <= tol
    assert (g[..., 1] < 60).all()  # no green band anywhere


def test_other_formats_and_non_images_are_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.gif")
    with pytest.raises(ImageReadError, match="is a GIF file; supported formats are PNG, JPEG, BMP and WebP"):
        read_image(tmp_path / "x.gif")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(tmp_path / "notes.png")


def test_collect_folders_globs_and_duplicates(tmp_path):
    for rel in ("a/1.png", "a/b/2.JPG", "a/b/.hidden.png", "c/3.webp"):
        save(Image.new("RGB", (4, 4)), tmp_path / rel, format="PNG")
    (tmp_path / "a" / "README.txt").write_text("hi")
    got = collect_images([tmp_path / "a", str(tmp_path / "c" / "*.webp"), tmp_path / "a" / "1.png",
                          str(tmp_path / "nothing*.png"), tmp_path / "missing.png"])
    assert [p.relative_to(tmp_path).as_posix() for p in got.files] == ["a/1.png", "a/b/2.JPG", "c/3.webp"]
    assert got.ignored == 1 and got.missing == [str(tmp_path / "nothing*.png"), str(tmp_path / "missing.png")]


# ---- bad files and flags ------------------------------------------------------------------------------

def bad_folder(root: Path, good: int = 3) -> Path:
    rng = np.random.default_rng(1)
    for i in range(good):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"good{i}.png")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    (root / "text.jpg").write_text("definitely not a JPEG")
    return root


def test_corrupt_files_are_named_and_skipped(setup, tmp_path):
    run = setup[0]
    folder = tmp_path / "imgs"
    folder.mkdir()
    bad_folder(folder)
    out: list[str] = []
    err: list[str] = []
    with pytest.raises(PartialFailure) as info:
        predict_command([folder, tmp_path / "nope.png"], run.path, json_path=tmp_path / "p.json",
                        echo=out.append, err=err.append)
    assert info.value.exit_code == 1 and "3 of 6 files could not be read" in str(info.value)
    table = "\n".join(out)
    assert all(f"good{i}.png" in table for i in range(3)) and "truncated" not in table
    assert len(err) == 3 and all(line.startswith("skipped ") for line in err)
    assert any("truncated.png" in e for e in err) and any("text.jpg" in e for e in err)
    assert any("nope.png" in e and "no such file" in e for e in err)
    data = json.loads((tmp_path / "p.json").read_text())
    assert len(data["images"]) == 3 and len(data["failed"]) == 3


def test_none_readable_is_exit_2_and_writes_nothing(setup, tmp_path):
    run = setup[0]
    folder = tmp_path / "bad"
    folder.mkdir()
    bad_folder(folder, good=0)
    with pytest.raises(UserError) as info:
        predict([folder], run.path, json_path=tmp_path / "p.json")
    assert info.value.exit_code == 2 and "none of the 2 files could be read" in str(info.value)
    assert not (tmp_path / "p.json").exists()
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="no image files found") as info:
        predict([folder / "sub"], run.path)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("kwargs, words", [
    ({"top_k": 0}, "--top-k must be at least 1"),
    ({"top_k": 11}, "--top-k must be at most 10"),
    ({"layers": [3]}, "add --cam"),
    ({"out": "x"}, "add --cam"),
    ({"cam": True, "layers": [5]}, "--layer must be one of 1, 2, 3, 4"),
    ({"which": "first"}, "choose 'best' or 'last'"),
])
def test_bad_flags(setup, tmp_path, kwargs, words):
    run, _, _, pngs = setup
    with pytest.raises(UserError) as info:
        predict([pngs / "test_000.png"], run.path, json_path=tmp_path / "p.json", **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "p.json").exists()


def test_missing_run_or_checkpoint(setup, tmp_path):
    _, _, _, pngs = setup
    with pytest.raises(UserError, match="does not exist"):
        predict([pngs], tmp_path / "no-run")
    empty = make_run(tmp_path / "r", tmp_path, checkpoints=())
    with pytest.raises(UserError, match="has no last.pt"):
        predict([pngs], empty.path)


# ---- Grad-CAM figures --------------------------------------------------------------------------------

def test_cam_figures_written(setup, tmp_path):
    run, _, _, pngs = setup
    files = [pngs / "test_000.png", pngs / "test_001.png"]
    other = save(Image.open(files[0]).resize((120, 90)), tmp_path / "other" / "test_000.png")  # same stem
    out = tmp_path / "cams"
    result = predict([*files, other], run.path, cam=True, layers=[3, 4], out=out, json_path=tmp_path / "p.json")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["test_000-2_gradcam.png", "test_000_gradcam.png", "test_001_gradcam.png"]
    for p in result.predictions:
        assert p.cam is not None and p.cam.parent == out
        img = np.asarray(Image.open(p.cam).convert("RGB"))
        # original + one overlay per layer, 160 px tiles side by side
        assert img.shape[1] >= 3 * 160 and img.shape[0] > 160 and img.std() > 10
    data = json.loads((tmp_path / "p.json").read_text())
    assert [Path(d["cam"]).name for d in data["images"]] == ["test_000_gradcam.png", "test_001_gradcam.png",
                                                             "test_000-2_gradcam.png"]
    assert not list(out.glob(".*.tmp"))


def test_cam_default_folder_is_in_the_run(setup):
    run, _, _, pngs = setup
    result = predict([pngs / "test_002.png"], run.path, cam=True)
    assert result.cam_dir == run.path / "predictions" and (run.path / "predictions" / "test_002_gradcam.png").is_file()
    assert result.layers == [3]


# ---- the command line --------------------------------------------------------------------------------

def test_cli_exit_status(setup, tmp_path):
    run, _, _, pngs = setup
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cmd = [sys.executable, str(ROOT / "cli.py"), "predict", "--run", str(run.path), "--top-k", "2"]
    proc = subprocess.run([*cmd, str(pngs / "test_000.png"), str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-1500:]
    assert "test_000.png" in proc.stdout and "top-2" in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"skipped {bad}:") and lines[-1].startswith("error: 1 of 2 files")
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([*cmd, str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: the file could not be read")


def test_predict_and_export_stay_clear_of_ffcv_and_training(setup):
    from tests.test_structure import assert_stays_clear_of_ffcv_and_training

    run, _, _, pngs = setup
    assert_stays_clear_of_ffcv_and_training(
        "from analysis.model_use.predict import predict\nimport analysis.model_use.export, analysis.inspection.tensorboard_images",
        f"predict([{str(pngs / 'test_000.png')!r}], {str(run.path)!r})")
