"""The torch data path: augment_torch against the numba kernel, the torch loader's contract (the
FFCV loader's interface), and `--loader` resolution.

Equivalence is checked on the CPU, per augmentation and all together, for both border modes, on
noise images (the worst case for bilinear differences) and smooth ones. Float32 output may differ
from the kernel's by float rounding (the kernel is built with fastmath and rotation goes through
grid_sample's normalised coordinates here): at most `augment_torch.KERNEL_ATOL`; uint8 output by 1
on at most 0.05% of values, where v + 0.5 lands within float rounding of an integer. Both bounds
leave margin over the measured differences (docs/BENCHMARKS.md, 'torch data path').
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import AugmentConfig
from common.errors import UserError
from pipeline import augment_torch as at
from pipeline import kernels
from pipeline.augment_spec import kernel_params
from pipeline.torch_loader import TorchCifarLoader, make_torch_loader, shuffle_order

MEAN = (125.3, 122.9, 113.8)
STD = (63.0, 62.1, 66.7)
FILL = (7, 130, 251)
SEED, EPOCH = 3, 1
N_TRAIN, N_TEST = 500, 100
BS = 50
BORDERS = ["constant", pytest.param("reflect", marks=pytest.mark.skipif(
    not hasattr(kernels, "P_BORDER"), reason="the numba kernel has no reflect border mode yet"))]


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def smooth(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    a = rng.uniform(0.1, 0.4, (n, 1, 1, 3))
    b = rng.uniform(0.1, 0.4, (n, 1, 1, 3))
    img = 128 + 60 * np.sin(a * xx[None, ..., None]) + 50 * np.cos(b * yy[None, ..., None])
    return np.clip(np.rint(img + rng.normal(0, 3, img.shape)), 0, 255).astype(np.uint8)


def kernel_out(src: np.ndarray, idx: np.ndarray, aug: AugmentConfig, normalize: bool) -> np.ndarray:
    dst = np.zeros(src.shape, dtype=np.float32 if normalize else np.uint8)
    fill = np.asarray(aug.fill if aug.fill is not None else MEAN, dtype=np.float64)
    kernels.augment_batch(src, dst, idx, SEED, EPOCH, kernel_params(aug, normalize), fill,
                          np.asarray(MEAN), 1.0 / np.asarray(STD))
    return dst


def torch_out(src: np.ndarray, idx: np.ndarray, aug: AugmentConfig, normalize: bool) -> np.ndarray:
    spec = at.AugmentSpec.from_config(aug, MEAN, STD, normalize=normalize)
    out = at.augment(torch.from_numpy(src), torch.from_numpy(idx), SEED, EPOCH, spec)
    assert out.shape == (len(src), 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.dtype == (torch.float32 if normalize else torch.uint8)
    return out.permute(0, 2, 3, 1).numpy()


ONLY = {  # each augmentation alone, always firing where it has a probability
    "crop": dict(crop=True, pad=4),
    "flip": dict(flip=True, flip_p=0.5),
    "flip_alternate": dict(flip=True, flip_p=0.5, alternate_flip=True),
    "rotate": dict(rotate=True, max_angle=5.0),
    "rotate30": dict(rotate=True, max_angle=30.0),
    "cutout": dict(cutout=True, cutout_p=0.5, cutout_size=16),
    "all": dict(crop=True, flip=True, rotate=True, cutout=True),
    "all_big": dict(crop=True, pad=16, flip=True, rotate=True, max_angle=180.0, cutout=True, cutout_size=31),
    "none": dict(),
}


def config(name: str, border: str, fill=FILL) -> AugmentConfig:
    kw = dict(crop=False, flip=False, rotate=False, cutout=False, fill=fill, border=border)
    kw.update(ONLY[name])
    return AugmentConfig(**kw)


# ---------------------------------------------------------------------------------- hashing

@pytest.mark.parametrize("seed,epoch", [(0, 0), (3, 1), (2**63 + 12345, 7), (2**64 - 1, 2**40)])
def test_draw_params_equal_kernel(seed, epoch):
    aug = AugmentConfig(pad=5, cutout_size=9, max_angle=17.0, flip_p=0.3, cutout_p=0.7)
    params = kernel_params(aug, False)
    idx = np.concatenate([np.arange(3000), np.arange(5) + 2**40, [2**62, 2**63 - 1]]).astype(np.int64)
    got = at.draw_params(seed, epoch, torch.from_numpy(idx), at.AugmentSpec.from_config(aug, MEAN, STD))
    rows = [kernels.draw_params(np.uint64(seed), np.uint64(epoch), i, params) for i in idx]
    for j, key in enumerate(("dy", "dx", "flip", "angle", "cut_y", "cut_x", "do_cut")):
        want = np.array([r[j] for r in rows])
        np.testing.assert_array_equal(got[key].numpy(), want, err_msg=key)  # angles too: bit-exact


@pytest.mark.parametrize("seed", [0, 2**63 + 12345])
def test_alternate_flip_shows_each_image_both_ways(seed):
    """--alternate-flip: the two implementations draw the same flips, each image's flip inverts from
    one epoch to the next (the other draws stay per-epoch), and about half the images flip."""
    aug = AugmentConfig(pad=4, flip_p=0.5, cutout_p=0.7, alternate_flip=True)
    spec = at.AugmentSpec.from_config(aug, MEAN, STD)
    params = kernel_params(aug, False)
    idx = np.arange(4000, dtype=np.int64)
    flips, dys = [], []
    for epoch in range(4):
        got = at.draw_params(seed, epoch, torch.from_numpy(idx), spec)
        want = np.array([kernels.draw_params(np.uint64(seed), np.uint64(epoch), i, params)[2] for i in idx])
        np.testing.assert_array_equal(got["flip"].numpy(), want)
        flips.append(want)
        dys.append(got["dy"].numpy())
    for a, b in zip(flips, flips[1:]):
        assert np.all(a != b)
    assert 0.45 < flips[0].mean() < 0.55
    assert np.mean(dys[0] == dys[1]) < 0.3  # crop offsets are still drawn anew (1/9 agree by chance)
    off = at.draw_params(seed, 1, torch.from_numpy(idx), at.AugmentSpec.from_config(
        AugmentConfig(pad=4, flip_p=0.5, cutout_p=0.7), MEAN, STD))["flip"].numpy()
    assert 0.4 < np.mean(off == flips[0]) < 0.6  # without the flag, epochs draw flips independently


def test_hash_wraps_like_uint64():
    x = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63)], dtype=torch.int64)
    want = [int(kernels.splitmix64(np.uint64(v & (2**64 - 1)))) for v in x.tolist()]
    got = [v & (2**64 - 1) for v in at.splitmix64(x).tolist()]
    assert got == want
    assert all(at.splitmix64_int(v & (2**64 - 1)) == w for v, w in zip(x.tolist(), want))


# ------------------------------------------------------------------------------- equivalence

@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("name", list(ONLY))
def test_augment_equals_kernel(name, border):
    src = np.concatenate([noise(192, seed=1), smooth(64, seed=2)])
    idx = (np.arange(len(src)) * 7 + 1000).astype(np.int64)
    aug = config(name, border)
    f_k, f_t = kernel_out(src, idx, aug, True), torch_out(src, idx, aug, True)
    diff = np.abs(f_k.astype(np.float64) - f_t)
    assert diff.max() <= at.KERNEL_ATOL, (name, border, diff.max(), int((diff > at.KERNEL_ATOL).sum()))
    u_k, u_t = kernel_out(src, idx, aug, False), torch_out(src, idx, aug, False)
    udiff = np.abs(u_k.astype(np.int16) - u_t.astype(np.int16))
    assert udiff.max() <= 1 and (udiff > 0).mean() <= 5e-4, (name, border, int((udiff > 0).sum()))
    if name in ("none", "crop", "flip", "cutout"):  # no interpolation: exact
        assert udiff.max() == 0


@pytest.mark.parametrize("border", BORDERS)
def test_augment_default_fill_is_mean_and_normalises_to_zero(border):
    aug = AugmentConfig(crop=False, flip=False, rotate=False, cutout_p=1.0, cutout_size=32, border=border)
    out = torch_out(noise(4), np.arange(4, dtype=np.int64), aug, True)
    np.testing.assert_allclose(out, 0.0, atol=1e-5)


def test_augment_depends_on_index_not_position():
    spec = at.AugmentSpec.from_config(AugmentConfig(), MEAN, STD)
    src = torch.from_numpy(noise(40, seed=5))
    idx = torch.arange(40) + 77
    out = at.augment(src, idx, SEED, EPOCH, spec)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(at.augment(src[perm], idx[perm], SEED, EPOCH, spec), out[perm], rtol=0, atol=0)
    assert not torch.equal(at.augment(src, idx, SEED, EPOCH + 1, spec), out)


# ------------------------------------------------------------------------------------ loader

def decode_index(x: torch.Tensor, info) -> np.ndarray:
    """Dataset indices from un-augmented synthetic images (tests/synth.py encodes them)."""
    px = x.permute(0, 2, 3, 1).double().numpy()[:, 0, 1:3, 0] * info.std[0] + info.mean[0]
    px = np.rint(px).astype(np.int64)
    return px[:, 0] + 256 * px[:, 1]


@pytest.fixture(scope="module")
def plain(prepared_dir):
    return make_torch_loader(prepared_dir, "train", BS, aug=AugmentConfig.none(), seed=0)


def test_train_layout_and_pairs(plain, synth_splits):
    images, labels = synth_splits["train"]
    assert len(plain) == N_TRAIN // BS and plain.batch_size == BS and plain.epoch == 0
    assert plain.info.split == "train" and plain.info.count == N_TRAIN and len(plain.info.classes) == 10
    order = plain.order()
    seen = []
    for x, y in plain:
        assert x.dtype == torch.float32 and tuple(x.shape) == (BS, 3, 32, 32)
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert y.dtype == torch.int64 and tuple(y.shape) == (BS,)
        idx = decode_index(x, plain.info)
        np.testing.assert_array_equal(y.numpy(), labels[idx])
        back = x.permute(0, 2, 3, 1).double().numpy() * np.asarray(plain.info.std) + np.asarray(plain.info.mean)
        assert np.abs(back - images[idx]).max() < 1e-3
        seen.append(idx)
    assert plain.epoch == 1
    seen_all = np.concatenate(seen)
    np.testing.assert_array_equal(seen_all, order)  # order() announced this epoch's order
    assert sorted(seen_all.tolist()) == list(range(N_TRAIN))
    assert not np.array_equal(seen_all, np.arange(N_TRAIN))


def test_order_is_a_function_of_seed_and_epoch(prepared_dir, plain):
    plain.set_epoch(0)
    e0 = plain.order()
    plain.set_epoch(1)
    e1 = plain.order()
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, shuffle_order(N_TRAIN, 0, 0).numpy())
    fresh = make_torch_loader(prepared_dir, "train", BS, aug=AugmentConfig.none(), seed=0)
    fresh.set_epoch(1)
    np.testing.assert_array_equal(fresh.order(), e1)
    other = make_torch_loader(prepared_dir, "train", BS, aug=AugmentConfig.none(), seed=1)
    assert not np.array_equal(other.order(), e0)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_augmented_equals_kernel_and_resume_skips_exactly(prepared_dir, synth_splits, backend):
    """Each batch is augment_batch(source images, their indices, seed, epoch) with the train mean
    as fill; re-iterating after set_epoch and skipping k batches (what fit.py's resume does)
    gives the remaining batches of the uninterrupted epoch."""
    images, _ = synth_splits["train"]
    loader = make_torch_loader(prepared_dir, "train", BS, seed=4, augment_backend=backend)
    assert loader.backend == backend
    loader.set_epoch(2)
    order = loader.order()
    batches = list(loader)
    mean = np.asarray(loader.info.mean)
    params = kernel_params(AugmentConfig(), True)
    for b, (x, _) in enumerate(batches[:3]):
        idx = order[b * BS:(b + 1) * BS].astype(np.int64)
        ref = np.zeros((BS, 32, 32, 3), np.float32)
        kernels.augment_batch(images[idx], ref, idx, 4, 2, params, mean, mean, 1.0 / np.asarray(loader.info.std))
        atol = at.KERNEL_ATOL if backend == "torch" else 0
        np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), ref, atol=atol, rtol=0)
        assert x.is_contiguous(memory_format=torch.channels_last)
    again = make_torch_loader(prepared_dir, "train", BS, seed=4, augment_backend=backend)
    again.set_epoch(2)
    tail = [b for step, b in enumerate(again) if step >= 4]
    assert len(tail) == len(batches) - 4
    for (x, y), (x2, y2) in zip(batches[4:], tail):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_test_loader_in_order_with_partial_batch(prepared_dir, synth_splits):
    loader = make_torch_loader(prepared_dir, "test", 32)
    batches = list(loader)
    assert len(loader) == 4 and [len(y) for _, y in batches] == [32, 32, 32, 4]
    x = torch.cat([b[0] for b in batches])
    np.testing.assert_array_equal(decode_index(x, loader.info), np.arange(N_TEST))
    np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(), synth_splits["test"][1])
    np.testing.assert_array_equal(loader.order(), np.arange(N_TEST))


def test_subset_and_bad_arguments(prepared_dir):
    loader = make_torch_loader(prepared_dir, "train", 16, aug=AugmentConfig.none(), subset=100)
    assert loader.info.count == 100 and len(loader) == 6
    assert sorted(loader.order().tolist()) == list(range(100))
    assert all((decode_index(x, loader.info) < 100).all() for x, _ in loader)
    with pytest.raises(UserError, match="--subset"):
        make_torch_loader(prepared_dir, "train", 16, subset=0)
    with pytest.raises(UserError, match="batch"):
        make_torch_loader(prepared_dir, "train", N_TRAIN + 1)
    with pytest.raises(UserError, match="torchrun"):
        make_torch_loader(prepared_dir, "train", 16, distributed=True)


@pytest.mark.parametrize("count,world,drop_last", [(100, 3, False), (100, 4, True), (10, 4, False)])
def test_distributed_shards_cover_and_pad(count, world, drop_last):
    images = torch.zeros((count, 32, 32, 3), dtype=torch.uint8)
    labels = torch.arange(count)
    info = None
    spec = at.AugmentSpec.from_config(AugmentConfig.none(), MEAN, STD)
    shards = [TorchCifarLoader(images, labels, 8, spec, 0, True, drop_last, info, torch.device("cpu"), r, world)
              for r in range(world)]
    orders = [s.order() for s in shards]
    per_rank = -(-count // world)
    assert all(len(o) == per_rank for o in orders)
    assert set(np.concatenate(orders).tolist()) == set(range(count))  # cover the set
    assert np.bincount(np.concatenate(orders)).max() <= 2  # padding repeats each index at most once
    for s, o in zip(shards, orders):
        got = torch.cat([y for _, y in s]).numpy()
        n = len(s) * 8 if drop_last else per_rank
        np.testing.assert_array_equal(got, o[:n])


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_loader_matches_ffcv_loader_per_index(prepared_dir, backend):
    """Unshuffled, both paths read indices 0..N-1 in order: batches agree within float tolerance
    (exactly, with the numba backend: the same kernel)."""
    from pipeline.ffcv_loader import make_loader

    aug = AugmentConfig()
    ffcv = make_loader(prepared_dir, "train", 100, aug, seed=2, shuffle=False)
    ours = make_torch_loader(prepared_dir, "train", 100, aug, seed=2, shuffle=False, augment_backend=backend)
    for epoch in (0, 3):
        ffcv.set_epoch(epoch)
        ours.set_epoch(epoch)
        for (xf, yf), (xt, yt) in zip(ffcv, ours):
            assert torch.equal(yf, yt)
            assert (xf - xt).abs().max().item() <= (at.KERNEL_ATOL if backend == "torch" else 0.0)
    assert ffcv.info == ours.info


def test_backend_choice(prepared_dir):
    assert make_torch_loader(prepared_dir, "test", 50).backend == "numba"  # auto on the CPU, numba here
    with pytest.raises(UserError, match="CPU only"):
        make_torch_loader(prepared_dir, "test", 50, device="meta", augment_backend="numba")
    with pytest.raises(UserError, match="auto, torch or numba"):
        make_torch_loader(prepared_dir, "test", 50, augment_backend="cuda")


# ----------------------------------------------------------------------------- --loader choice

def _no_betons(tmp_path, prepared_dir):
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(prepared_dir, data)
    m = json.loads((data / "manifest.json").read_text())
    m["betons"] = []
    for name in ("train", "test"):
        (data / f"{name}.beton").unlink()
        del m["splits"][name]["sha256"], m["splits"][name]["bytes"]
    (data / "manifest.json").write_text(json.dumps(m))
    return data


def test_resolve_loader(tmp_path, prepared_dir, monkeypatch):
    from pipeline import loaders as loader_choice

    cpu = torch.device("cpu")
    assert loader_choice.resolve_loader("torch", cpu)[0] == "torch"
    assert loader_choice.resolve_loader("ffcv", cpu, prepared_dir)[0] == "ffcv"
    assert loader_choice.resolve_loader("auto", cpu, prepared_dir)[0] == "ffcv"
    kind, why = loader_choice.resolve_loader("auto", torch.device("cuda"), prepared_dir)
    assert kind == loader_choice.AUTO_ON_CUDA and "CUDA" in why
    bare = _no_betons(tmp_path, prepared_dir)
    kind, why = loader_choice.resolve_loader("auto", cpu, bare)
    assert kind == "torch" and "no .beton" in why
    with pytest.raises(UserError, match="prepared without FFCV.*--force.*--loader torch"):
        loader_choice.resolve_loader("ffcv", cpu, bare)
    assert len(list(make_torch_loader(bare, "test", 50))) == 2  # the torch path needs no beton
    with pytest.raises(UserError, match="--loader must be one of"):
        loader_choice.resolve_loader("dali", cpu)
    monkeypatch.setattr(loader_choice, "ffcv_import_error", lambda: "ImportError: No module named 'ffcv'")
    kind, why = loader_choice.resolve_loader("auto", cpu, prepared_dir)
    assert kind == "torch" and "does not import" in why
    with pytest.raises(UserError, match="FFCV does not import.*install.*--loader torch"):
        loader_choice.resolve_loader("ffcv", cpu, prepared_dir)


def test_bench_rows_on_synthetic_images():
    from bench.torch_loader import bench_torch_loader

    rows = bench_torch_loader(noise(256), batch_size=64, epochs=1, configs=("all", "none"), log=lambda m: None)
    assert [r["augment"] for r in rows] == ["all", "none"]
    assert all(r["img_s"] > 0 and r["images"] == 256 and r["device"] == "cpu" for r in rows)
