"""analysis/: selection, explain (gallery, CAMs, faithfulness), evaluate, and bad input.

Runs are real run directories built in tmp (config.json, checkpoints written by RunDir, saved
predictions, a data folder with test.npz) around an untrained ResNet-18, so every path through
`RunDir.load_model` and `read_test_arrays` is the production one. Whether the CAMs mean anything
is checked on a synthetic task with a known answer, through the same `compute_cams` explain uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from analysis.gradcam import compute_cams, target_block
from analysis.inspection.evaluate import confusion_matrix, evaluate
from analysis.inspection.explain import explain
from analysis.inspection.faithfulness import road_scores
from analysis.inspection.selection import confidence, select_misclassified
from analysis.inspection.test_predictions import predict_probs
from analysis.loading import open_run, resolve_run, to_model_input
from common.config import ModelConfig, TrainConfig
from common.errors import UserError
from common.records import DataRecord
from common.rundir import Predictions, RunDir
from models.loading import load_run_model
from pipeline.cifar_source import CLASSES

N_TEST = 60
MEAN = [125.3, 123.0, 113.9]
STD = [63.0, 62.1, 66.7]


# ---- fixtures: a data folder and run directories -----------------------------------------------

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_test_arrays(folder: Path, n: int = N_TEST, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10  # every class present
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "test.npz", images=images, labels=labels.astype(np.int64))
    return images, labels.astype(np.int64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_test_arrays(folder)
    return folder


@pytest.fixture(scope="module")
def test_arrays(data_dir) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_dir / "test.npz") as z:
        return z["images"], z["labels"]


_STATE: dict[str, dict] = {}
WIDTH = 8  # the runs built here have the default model at `--width 8`: the same layers, 1/63 of the cost


def model_state(norm: str = "layer") -> dict:
    """One untrained ResNet-18 state per norm (the default model at WIDTH, as `train --width 8`
    builds it), shared by every run built here (seeded)."""
    if norm not in _STATE:
        from models import build_model

        torch.manual_seed(0)
        _STATE[norm] = build_model(ModelConfig(norm=norm, width=WIDTH, groups=WIDTH)).state_dict()
    return _STATE[norm]


def fake_probs(labels: np.ndarray, seed: int = 0, correct_every: int = 2) -> np.ndarray:
    """Softmax-like rows; every `correct_every`-th row is made correct, the others wrong."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(10, 0.5), size=len(labels)).astype(np.float32)
    for i, y in enumerate(labels):
        top = int(probs[i].argmax())
        want = int(y) if i % correct_every == 0 else (int(y) + 1 + i % 9) % 10
        probs[i, [top, want]] = probs[i, [want, top]]
    return probs


def make_run(path: Path, data_dir: Path, *, norm: str = "layer", weights_norm: str | None = None,
             checkpoints: tuple[str, ...] = ("best", "last"), probs: np.ndarray | None = None,
             labels: np.ndarray | None = None, test_subset: int | None = None, weight_std: bool = False) -> RunDir:
    """A run directory as training writes it; `weights_norm` != norm makes a mismatched one;
    `weight_std` records weight-standardized convs (the same weights load into either)."""
    run = RunDir(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig()
    cfg.data.data_dir = str(data_dir)
    cfg.model.norm, cfg.model.width, cfg.model.groups = norm, WIDTH, WIDTH
    cfg.data.test_subset = test_subset
    cfg.model.weight_std = weight_std
    run.write_config({
        "train": cfg.to_dict(),
        "data": DataRecord(data_dir=str(data_dir), source="synthetic", official=False, train_mean=MEAN,
                           train_std=STD, classes=list(CLASSES), sha256={}).to_dict(),
        "versions": {},
    })
    for which in checkpoints:
        run.save_checkpoint(which, {"model": model_state(weights_norm or norm), "epoch": 1})
    if probs is not None:
        assert labels is not None, "probs need their labels"
        for which in checkpoints:
            run.write_predictions(which, labels, probs)
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir, test_arrays) -> RunDir:
    """A run with saved predictions: half of the 60 test images correct, half wrong."""
    labels = test_arrays[1]
    return make_run(tmp_path_factory.mktemp("runs") / "r1", data_dir, probs=fake_probs(labels),
                    labels=labels)


# ---- loading ---------------------------------------------------------------------------------

def test_model_input_is_normalised_nchw(test_arrays):
    images = test_arrays[0][:3]
    mean, std = np.array(MEAN, np.float32), np.array(STD, np.float32)
    x = to_model_input(images, mean, std)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    expect = (images[1, 5, 7].astype(np.float32) - mean) / std  # pixel (row 5, col 7) of image 1
    np.testing.assert_allclose(x[1, :, 5, 7].numpy(), expect, rtol=1e-6)


def test_newest_run_is_default(tmp_path, data_dir):
    import os

    old = make_run(tmp_path / "old", data_dir, checkpoints=("last",))
    new = make_run(tmp_path / "new", data_dir, checkpoints=("last",))
    os.utime(old.checkpoint_path("last"), (1, 1))
    assert resolve_run(None, tmp_path).path == new.path
    with pytest.raises(UserError, match="no trained run"):
        resolve_run(None, tmp_path / "empty")


# ---- selection -------------------------------------------------------------------------------

def test_confident_selection_matches_predictions_file(run):
    pred = run.read_predictions("best")
    chosen = select_misclassified(pred, 7, "confident")
    wrong = np.flatnonzero(pred.preds != pred.labels)
    conf = pred.probs[wrong, pred.preds[wrong]]
    expect = wrong[np.argsort(-conf, kind="stable")][:7]
    assert chosen.tolist() == expect.tolist()
    assert np.all(pred.preds[chosen] != pred.labels[chosen])
    assert np.all(np.diff(confidence(pred)[chosen]) <= 0)  # most confident first


def test_random_selection_is_seeded(run):
    pred = run.read_predictions("best")
    a = select_misclassified(pred, 8, "random", seed=3)
    assert a.tolist() == select_misclassified(pred, 8, "random", seed=3).tolist()
    assert a.tolist() != select_misclassified(pred, 8, "random", seed=4).tolist()
    assert len(set(a.tolist())) == 8 and np.all(pred.preds[a] != pred.labels[a])
    # Asking for more than there are gives all of them.
    assert sorted(select_misclassified(pred, 1000, "random").tolist()) == pred.misclassified.tolist()


def test_selection_rejects_bad_input():
    labels = np.arange(10)
    probs = np.eye(10, dtype=np.float32)
    all_right = Predictions(labels, labels.copy(), probs)
    with pytest.raises(UserError, match="no misclassified"):
        select_misclassified(all_right, 5)
    wrong = Predictions(labels, (labels + 1) % 10, probs)
    with pytest.raises(UserError, match="--pick"):
        select_misclassified(wrong, 5, "worst")
    with pytest.raises(UserError, match="--count"):
        select_misclassified(wrong, 0)


# ---- explain ---------------------------------------------------------------------------------

def test_explain_outputs(run, test_arrays, monkeypatch):
    import matplotlib.image as mpimg

    import analysis.gallery as gallery

    shown = {}
    real = gallery.plot_misclassified

    def spy(images, indices, *args, **kwargs):
        shown["images"], shown["indices"] = images.copy(), list(indices)
        return real(images, indices, *args, **kwargs)

    monkeypatch.setattr(gallery, "plot_misclassified", spy)
    result = explain(run.path, layers=[3, 4], count=6, seed=0)

    pred = run.read_predictions("best")
    expect = select_misclassified(pred, 6, "confident")
    assert result.indices == expect.tolist() == shown["indices"]
    assert result.labels == pred.labels[expect].tolist() and result.preds == pred.preds[expect].tolist()
    # The gallery got exactly those test images, in that order.
    np.testing.assert_array_equal(shown["images"], test_arrays[0][expect])

    out = run.analysis_dir
    names = {p.name for p in result.files}
    assert names == {"misclassified.png", "gradcam_layer3.png", "gradcam_layer3_scores.json",
                     "gradcam_layer4.png", "gradcam_layer4_scores.json"}
    for name in ("misclassified.png", "gradcam_layer3.png", "gradcam_layer4.png"):
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[1] > 600 and img.shape[0] > 300, (name, img.shape)
        assert img[..., :3].std() > 0.05  # not blank
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temp files

    # Gallery tile k is test image indices[k], upscaled 5x, pixel for pixel.
    grid = gallery.misclassified_layout(6, 32 * gallery.SCALE)
    png = mpimg.imread(out / "misclassified.png")
    assert png.shape[:2] == (grid.height, grid.width)
    k = 5  # second row, first column
    y, x = grid.y0(1), grid.x0(0)
    tile = png[y:y + grid.tile, x:x + grid.tile, :3]
    np.testing.assert_allclose(tile[::gallery.SCALE, ::gallery.SCALE], test_arrays[0][expect[k]] / 255,
                               atol=1 / 255 + 1e-6)

    for layer, res in ((3, [8, 8]), (4, [4, 4])):
        scores = json.loads((out / f"gradcam_layer{layer}_scores.json").read_text())
        assert scores["better"] == "higher is better" and "ROAD" in scores["metric"]
        assert scores["cam_resolution"] == res and scores["target_layer"] == f"layer{layer}[-1]"
        assert [im["index"] for im in scores["images"]] == result.indices
        assert [im["explained"] for im in scores["images"]] == [CLASSES[p] for p in result.preds]
        per = [im["score"] for im in scores["images"]]
        assert all(-0.5 <= s <= 0.5 for s in per)
        assert scores["mean"] == pytest.approx(np.mean(per), abs=1e-5)


def test_explain_true_class_and_other_method(run):
    result = explain(run.path, layers=[4], count=2, pick="random", seed=1, target="true",
                     method="gradcam++")
    scores = json.loads(result.layers[0].scores_json.read_text())
    assert result.layers[0].figure.name == "gradcampp_layer4.png"
    assert [im["explained"] for im in scores["images"]] == [CLASSES[y] for y in result.labels]
    assert result.indices == select_misclassified(run.read_predictions("best"), 2, "random", 1).tolist()


def test_explain_recomputes_missing_predictions(tmp_path, data_dir, test_arrays):
    run = make_run(tmp_path / "r", data_dir, checkpoints=("last",))  # no best.pt, no predictions
    result = explain(run.path, layers=[4], count=2)
    assert result.which == "last" and result.predictions_source == "recomputed"
    saved = run.read_predictions("last")
    assert saved is not None, "recomputed predictions should be saved for next time"
    model = load_run_model(run, "last")
    probs = predict_probs(model, test_arrays[0], np.array(MEAN, np.float32), np.array(STD, np.float32))
    np.testing.assert_allclose(saved.probs, probs, atol=1e-5)
    np.testing.assert_array_equal(saved.labels, test_arrays[1])


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", [0, 5])
def test_bad_layer(run, layer):
    with pytest.raises(UserError, match=r"--layer must be one of 1, 2, 3, 4.*got " + str(layer)):
        explain(run.path, layers=[layer])


def test_unknown_method_lists_choices(run):
    with pytest.raises(UserError, match=r"unknown CAM method 'gradcam3'; choose one of gradcam, gradcam\+\+"):
        explain(run.path, method="gradcam3")


def test_bad_target_and_checkpoint_name(run):
    with pytest.raises(UserError, match="--target"):
        explain(run.path, target="guess")
    with pytest.raises(UserError, match="'best' or 'last'"):
        evaluate(run.path, which="final")


def test_run_without_checkpoint(tmp_path, data_dir):
    run = make_run(tmp_path / "r", data_dir, checkpoints=())
    for call in (lambda: explain(run.path), lambda: evaluate(run.path)):
        with pytest.raises(UserError, match=r"has no last\.pt; train it first"):
            call()


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        explain(tmp_path / "nope")
    with pytest.raises(UserError, match="no config.json"):
        evaluate(tmp_path)


def test_checkpoint_that_does_not_match_config(tmp_path, data_dir):
    # config says BatchNorm (has running_mean buffers), the weights are LayerNorm ones
    run = make_run(tmp_path / "r", data_dir, norm="batch", weights_norm="layer")
    with pytest.raises(UserError, match=r"does not match the model in config.json \(norm=batch\)"):
        explain(run.path)


def test_all_predictions_correct(tmp_path, data_dir, test_arrays):
    labels = test_arrays[1]
    run = make_run(tmp_path / "r", data_dir, probs=fake_probs(labels, correct_every=1), labels=labels)
    with pytest.raises(UserError, match="no misclassified test images"):
        explain(run.path)


def test_predictions_from_other_data(tmp_path, data_dir, test_arrays):
    labels = test_arrays[1]
    shuffled = np.roll(labels, 1)  # e.g. written in another order
    run = make_run(tmp_path / "r", data_dir, probs=fake_probs(shuffled), labels=shuffled)
    with pytest.raises(UserError, match=r"does not match the test set .*labels differ"):
        explain(run.path)


def test_missing_data_folder(tmp_path, data_dir):
    run = make_run(tmp_path / "r", data_dir, checkpoints=())
    with pytest.raises(UserError, match="--data"):
        open_run(run.path, data_dir=tmp_path / "gone")


# ---- evaluate --------------------------------------------------------------------------------

def test_evaluate_from_saved_predictions(run):
    import matplotlib.image as mpimg

    result = evaluate(run.path)
    pred = run.read_predictions("best")
    assert result.source == "saved predictions_best.npz"
    assert result.confusion.sum() == N_TEST
    for c in range(10):
        mask = pred.labels == c
        assert result.class_accuracy[c] == pytest.approx((pred.preds[mask] == c).mean())
    assert result.accuracy == pytest.approx((pred.preds == pred.labels).mean())
    np.testing.assert_array_equal(result.confusion, confusion_matrix(pred.labels, pred.preds, 10))
    assert result.confusion[3].sum() == (pred.labels == 3).sum()  # rows are true classes

    saved = json.loads(result.json_path.read_text())
    assert saved["test_images"] == N_TEST and saved["accuracy"] == pytest.approx(result.accuracy, abs=1e-6)
    assert sum(map(sum, saved["confusion_matrix"]["counts"])) == N_TEST
    assert saved["per_class"]["cat"]["total"] == (pred.labels == 3).sum()
    img = mpimg.imread(result.figure)
    assert img.shape[1] > 600 and img.shape[0] > 500
    table = result.table()
    assert all(name in table for name in CLASSES) and "overall" in table


def test_evaluate_recompute(run, test_arrays):
    before = run.predictions_path("best").read_bytes()
    result = evaluate(run.path, recompute=True)
    assert result.source == "recomputed"
    model = load_run_model(run, "best")
    probs = predict_probs(model, test_arrays[0], np.array(MEAN, np.float32), np.array(STD, np.float32))
    np.testing.assert_array_equal(result.confusion, confusion_matrix(test_arrays[1], probs.argmax(1), 10))
    assert result.confusion.sum() == N_TEST
    assert run.predictions_path("best").read_bytes() == before  # training's record is never overwritten


def test_confusion_matrix_counts():
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


# ---- does the CAM point at the evidence? -----------------------------------------------------

PATCH = 8
COLOURS = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40]], np.uint8)
EMPTY = len(COLOURS)  # extra training-only class: noise without a patch


def patch_images(n: int, seed: int, with_empty: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey noise with one bright 8x8 patch at a random place; its colour is the class.

    The 'no patch' class exists only in training: without it the net learns one colour as
    'none of the others', and that class's evidence is then the absence of colour everywhere
    (its CAMs were diffuse in trials), which no attribution could localise.
    """
    rng = np.random.default_rng(seed)
    images = np.repeat(rng.integers(60, 196, size=(n, 32, 32, 1), dtype=np.uint8), 3, axis=3)
    labels = rng.integers(0, EMPTY + 1 if with_empty else EMPTY, size=n)
    corners = rng.integers(0, 32 - PATCH + 1, size=(n, 2))
    for img, y, (r, c) in zip(images, labels, corners):
        if y < EMPTY:
            img[r:r + PATCH, c:c + PATCH] = COLOURS[y]
    return images, labels, corners


class PatchNet(nn.Module):
    """Small CNN with ResNet-18's stage names and map sizes (layer3: 8x8, layer4: 4x4).

    Downsampling by max-pool rather than strided convs: over 6 training seeds the peak landed on
    the patch for 100% of images at both layers with pooling, but for 69-100% at layer4 with
    stride-2 convs (and one seed never converged at lr 3e-3), too fragile for a test.
    """

    def __init__(self, width: int = 16, classes: int = EMPTY + 1):
        super().__init__()

        def stage(cin: int, pool: bool) -> nn.Sequential:
            block = [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
            return nn.Sequential(nn.Sequential(*block))  # stage of one block, like model.layerN

        self.layer1, self.layer2 = stage(3, False), stage(width, True)
        self.layer3, self.layer4 = stage(width, True), stage(width, True)
        self.linear = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def patch_model() -> PatchNet:
    # Smoothed loss < 0.03 after 120-155 steps for seeds 0-5, ~2 s on one thread.
    mean, std = np.full(3, 127.5, np.float32), np.full(3, 64.0, np.float32)
    images, labels, _ = patch_images(512, seed=0, with_empty=True)
    x, y = to_model_input(images, mean, std), torch.from_numpy(labels)
    torch.manual_seed(0)
    model = PatchNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ema = None
    for _ in range(400):
        idx = torch.randint(0, len(x), (32,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if ema < 0.03:
            break
    return model.eval()


def test_cam_peak_lies_on_the_patch(patch_model):
    mean, std = np.full(3, 127.5, np.float32), np.full(3, 64.0, np.float32)
    images, labels, corners = patch_images(48, seed=1, with_empty=False)
    x = to_model_input(images, mean, std)
    with torch.no_grad():
        assert (patch_model(x).argmax(1).numpy() == labels).mean() >= 0.9, "synthetic model did not learn"

    layers = [target_block(patch_model, 3), target_block(patch_model, 4)]
    batch = compute_cams(patch_model, layers, x, labels.tolist(), "gradcam")
    assert batch.cams.shape == (48, 2, 32, 32) and batch.resolutions == [(8, 8), (4, 4)]
    for i, (h, _w) in enumerate(batch.resolutions):
        cell = 32 // h
        hits = 0
        for cam, (r, c) in zip(batch.cams[:, i], corners):
            pr, pc = np.unravel_index(cam.argmax(), cam.shape)
            # The map's most relevant native cell must overlap the patch (chance: ~25% at 4x4,
            # ~11% at 8x8 for an 8-px patch).
            cr, cc = (pr // cell) * cell, (pc // cell) * cell
            hits += (cr < r + PATCH and r < cr + cell) and (cc < c + PATCH and c < cc + cell)
        assert hits / len(corners) >= 0.85, f"layer{3 + i}: CAM peak on the patch for only {hits}/{len(corners)}"

    # Faithfulness: removing what the CAM marks must hurt far more than removing the rest, and a
    # map moved off the patch (rolled by half the image) must score clearly worse.
    cam3 = batch.cams[:, 0]
    moved = np.roll(cam3, (16, 16), axis=(1, 2))
    real, fake = road_scores(patch_model, x, [cam3, moved], labels.tolist(), logits=batch.logits)
    assert real.mean > 0.25, real.score
    assert real.mean > fake.mean + 0.2, (real.mean, fake.mean)
    assert np.all(real.prob_morf <= real.prob + 1e-6)
