"""FFCV loaders over the synthetic prepared folder (500 train / 100 test images).

Synthetic images encode their label and index (tests/synth.py): pixel [0, 0, 0] = label * 25,
[0, 1, 0] = index % 256, [0, 2, 0] = index // 256, so with augmentation off every batch can be
traced back to its source images after shuffling. FFCV compiles its pipeline per loader (seconds
each), so the loaders are module fixtures, each iterated once per epoch it is asked for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import AugmentConfig
from common.errors import UserError
from pipeline import kernels
from pipeline.augment_spec import kernel_params
from pipeline.ffcv_loader import make_loader

BS = 50  # 500 train images → 10 full batches
N_TRAIN, N_TEST = 500, 100


# ----------------------------------------------------------------------------------- helpers

def hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy().astype(np.float64)


def denorm(images: torch.Tensor, info) -> np.ndarray:
    return hwc(images) * np.asarray(info.std) + np.asarray(info.mean)


def decode(images: torch.Tensor, info) -> tuple[np.ndarray, np.ndarray]:
    """(labels, indices) read back from the pixels of un-augmented images."""
    px = np.rint(denorm(images, info)[:, 0, :3, 0]).astype(np.int64)
    return px[:, 0] // 25, px[:, 1] + 256 * px[:, 2]


def epoch_of(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def cat(batches) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def order_of(batches, info) -> np.ndarray:
    return np.concatenate([decode(x, info)[1] for x, _ in batches])


# ----------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def plain(prepared_dir):
    """Train loader, augmentation off, seed 0: epochs 0, 1, 2 collected (copy=True)."""
    loader = make_loader(prepared_dir, "train", BS, aug=AugmentConfig.none(), seed=0)
    epochs = [epoch_of(loader) for _ in range(3)]
    return loader, epochs


@pytest.fixture(scope="module")
def augmented(prepared_dir):
    """Train loader, default augmentation, seed 0: epochs 0, 1, 2."""
    loader = make_loader(prepared_dir, "train", BS, seed=0)
    epochs = [epoch_of(loader) for _ in range(3)]
    return loader, epochs


@pytest.fixture(scope="module")
def test_batches(prepared_dir):
    loader = make_loader(prepared_dir, "test", 32)
    return loader, [epoch_of(loader), epoch_of(loader)]


# ------------------------------------------------------------------------------- train batches

def test_train_batch_layout(plain, augmented):
    for loader, epochs in (plain, augmented):
        assert len(loader) == N_TRAIN // BS
        for batches in epochs:
            assert len(batches) == N_TRAIN // BS
            for x, y in batches:
                assert x.dtype == torch.float32 and tuple(x.shape) == (BS, 3, 32, 32)
                assert x.is_contiguous(memory_format=torch.channels_last)
                assert y.dtype == torch.int64 and tuple(y.shape) == (BS,)
                assert torch.isfinite(x).all()


def test_plain_train_pairs_images_with_labels(plain, synth_splits):
    loader, epochs = plain
    src_images, src_labels = synth_splits["train"]
    for batches in epochs:
        seen: set[int] = set()
        for x, y in batches:
            labels, idx = decode(x, loader.info)
            np.testing.assert_array_equal(labels, y.numpy())
            assert ((idx >= 0) & (idx < N_TRAIN)).all()
            assert not seen & set(idx.tolist()), "an index came twice in one epoch"
            seen |= set(idx.tolist())
            np.testing.assert_array_equal(y.numpy(), src_labels[idx])
            # no augmentation: the de-normalised pixels are the source images
            assert np.abs(denorm(x, loader.info) - src_images[idx]).max() < 1e-3
        assert seen == set(range(N_TRAIN))  # drop_last with 500 = 10 × 50 drops nothing


def test_plain_train_shuffles_per_epoch(plain):
    loader, epochs = plain
    orders = [order_of(b, loader.info) for b in epochs]
    assert not np.array_equal(orders[0], np.arange(N_TRAIN))
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])


def test_kept_batches_are_not_overwritten(plain, synth_splits):
    """copy=True: a batch kept while the loader runs on still holds its own images."""
    loader, _ = plain
    src_images, src_labels = synth_splits["train"]
    kept = []
    snapshots = []
    for x, y in loader:
        kept.append((x, y))
        snapshots.append((x.clone(), y.clone()))
    for (x, y), (x0, y0) in zip(kept, snapshots):
        assert torch.equal(x, x0) and torch.equal(y, y0)
        labels, idx = decode(x, loader.info)
        np.testing.assert_array_equal(labels, y.numpy())
        assert np.abs(denorm(x, loader.info) - src_images[idx]).max() < 1e-3
    # distinct batches really are distinct storage
    ptrs = {x.data_ptr() for x, _ in kept}
    assert len(ptrs) == len(kept)


def test_same_seed_same_order_and_set_epoch(prepared_dir, plain):
    """A fresh loader with the same seed: set_epoch(k) reproduces epoch k, order and pixels."""
    loader, epochs = plain
    fresh = make_loader(prepared_dir, "train", BS, aug=AugmentConfig.none(), seed=0)
    assert fresh.epoch == 0
    fresh.set_epoch(2)
    assert fresh.epoch == 2
    e2 = epoch_of(fresh)
    assert fresh.epoch == 3
    x_a, y_a = cat(epochs[2])
    x_b, y_b = cat(e2)
    assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)
    fresh.set_epoch(0)
    x_b, y_b = cat(epoch_of(fresh))
    x_a, y_a = cat(epochs[0])
    assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)
    np.testing.assert_array_equal(order_of(epochs[0], loader.info), decode(x_b, fresh.info)[1])


# -------------------------------------------------------------------------- augmented train

def test_augmented_equals_kernel_on_source(augmented, plain, synth_splits):
    """Each augmented batch is augment_batch(source images, their indices, seed, epoch), with the
    train mean as fill; shuffle order does not depend on the augmentation settings."""
    loader, epochs = augmented
    plain_loader, plain_epochs = plain
    src_images, _ = synth_splits["train"]
    mean = np.asarray(loader.info.mean, dtype=np.float64)
    inv_std = 1.0 / np.asarray(loader.info.std, dtype=np.float64)
    params = kernel_params(AugmentConfig(), True)
    for epoch, (batches, plain_batches) in enumerate(zip(epochs, plain_epochs)):
        for (x, y), (xp, yp) in zip(batches, plain_batches):
            assert torch.equal(y, yp)  # same seed → same order, whatever the augmentation
            idx = decode(xp, plain_loader.info)[1].astype(np.int64)
            ref = np.zeros((len(idx), 32, 32, 3), dtype=np.float32)
            kernels.augment_batch(src_images[idx], ref, idx, 0, epoch, params, mean, mean, inv_std)
            np.testing.assert_allclose(hwc(x), ref, atol=1e-5, rtol=0)


def test_augmented_reproducible_and_seeded(prepared_dir, augmented):
    loader, epochs = augmented
    first = epochs[0][0]
    same = make_loader(prepared_dir, "train", BS, seed=0)
    x, y = next(iter(same))
    assert torch.equal(x, first[0]) and torch.equal(y, first[1])
    # jumping over epoch 1 straight to 2 reproduces the whole of epoch 2
    same.set_epoch(2)
    x_b, y_b = cat(epoch_of(same))
    x_a, y_a = cat(epochs[2])
    assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)

    other = make_loader(prepared_dir, "train", BS, seed=1)
    xo, yo = cat(epoch_of(other))
    x0, y0 = cat(epochs[0])
    assert not torch.equal(xo[:BS], x0[:BS])
    assert not torch.equal(yo, y0)  # another shuffle
    assert sorted(yo.tolist()) == sorted(y0.tolist())


def test_augmented_epochs_differ(augmented):
    _, epochs = augmented
    x0, y0 = cat(epochs[0])
    x1, y1 = cat(epochs[1])
    assert not torch.equal(x0, x1) and not torch.equal(y0, y1)
    # augmentation really happened (not just a reshuffle): per-image stats change
    assert (x0.std(dim=(1, 2, 3)) - x1.std(dim=(1, 2, 3))).abs().max() > 0.01


# -------------------------------------------------------------------------------- test loader

def test_test_loader_order_and_batches(test_batches, synth_splits):
    loader, (batches, again) = test_batches
    src_images, src_labels = synth_splits["test"]
    assert len(loader) == 4
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]  # last partial batch kept
    x, y = cat(batches)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert all(b[0].is_contiguous(memory_format=torch.channels_last) for b in batches)
    labels, idx = decode(x, loader.info)
    np.testing.assert_array_equal(idx, np.arange(N_TEST))
    np.testing.assert_array_equal(y.numpy(), src_labels)
    np.testing.assert_array_equal(labels, src_labels)
    # no augmentation: de-normalised pixels are the source images
    assert np.abs(denorm(x, loader.info) - src_images).max() < 1e-3
    # a second pass is identical (fixed order, nothing random)
    x2, y2 = cat(again)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_test_loader_normalises_with_train_stats(test_batches, synth_splits):
    loader, (batches, _) = test_batches
    train = synth_splits["train"][0].reshape(-1, 3).astype(np.float64)
    test = synth_splits["test"][0].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(loader.info.mean, train.mean(0), atol=1e-6)
    np.testing.assert_allclose(loader.info.std, train.std(0), atol=1e-6)
    x, _ = cat(batches)
    got = hwc(x).reshape(-1, 3)
    np.testing.assert_allclose(got.mean(0), (test.mean(0) - train.mean(0)) / train.std(0), atol=1e-4)
    np.testing.assert_allclose(got.std(0), test.std(0) / train.std(0), atol=1e-4)


# ---------------------------------------------------------------------------------- bad input

def _copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_or_manifest(tmp_path):
    with pytest.raises(UserError, match="prepare"):
        make_loader(tmp_path / "nowhere", "train", BS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="prepare"):
        make_loader(tmp_path / "empty", "test", BS)


@pytest.mark.parametrize("missing", ["manifest.json", "train.beton", "test.beton"])
def test_missing_file(tmp_path, prepared_dir, missing):
    data = _copy_data(prepared_dir, tmp_path / "data")
    (data / missing).unlink()
    with pytest.raises(UserError, match="prepare"):
        make_loader(data, "train", BS)


def _truncate(path: Path, n: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(n)


@pytest.mark.parametrize("keep", ["empty", "header", "half", "most"])
def test_truncated_beton(tmp_path, prepared_dir, keep):
    data = _copy_data(prepared_dir, tmp_path / "data")
    path = data / "train.beton"
    size = path.stat().st_size
    _truncate(path, {"empty": 0, "header": 64, "half": size // 2, "most": int(size * 0.99)}[keep])
    with pytest.raises(UserError, match="prepare") as info:
        make_loader(data, "train", BS)
    assert "train.beton" in str(info.value)


def _without_size_record(data: Path) -> None:
    """Drop the byte counts from the manifest, so the checks behind the size check are reached
    (a manifest edited by hand, or a beton whose damage keeps its size)."""
    manifest = json.loads((data / "manifest.json").read_text())
    for split in manifest["splits"].values():
        split.pop("bytes", None)
    (data / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("cut", [1, 240])
def test_beton_with_truncated_allocation_table(tmp_path, prepared_dir, cut):
    """FFCV silently reads a short allocation table (wrong pairs, or an abort in free())."""
    data = _copy_data(prepared_dir, tmp_path / "data")
    path = data / "train.beton"
    _truncate(path, path.stat().st_size - cut)
    with pytest.raises(UserError, match="bytes but prepare wrote"):  # caught by size first ...
        make_loader(data, "train", BS)
    _without_size_record(data)
    # ... and by the allocation table without it (never iterate such a loader: it can abort)
    with pytest.raises(UserError, match="truncated or corrupt .*allocation table.*prepare"):
        make_loader(data, "train", BS)


def test_garbage_beton(tmp_path, prepared_dir):
    data = _copy_data(prepared_dir, tmp_path / "data")
    _without_size_record(data)
    path = data / "test.beton"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match="is not a readable FFCV beton.*prepare"):
        make_loader(data, "test", BS)


def test_beton_with_other_fields(tmp_path, prepared_dir):
    from ffcv.fields import IntField
    from ffcv.writer import DatasetWriter

    data = _copy_data(prepared_dir, tmp_path / "data")
    path = data / "train.beton"
    path.unlink()
    writer = DatasetWriter(str(path), {"x": IntField()}, num_workers=1)
    writer.from_indexed_dataset([(i,) for i in range(20)])
    _without_size_record(data)
    with pytest.raises(UserError, match=r"holds fields \['x'\], not the image/label pair.*prepare"):
        make_loader(data, "train", 10)


def test_batch_larger_than_train_set(prepared_dir):
    with pytest.raises(UserError, match="batch"):
        make_loader(prepared_dir, "train", N_TRAIN + 1)
