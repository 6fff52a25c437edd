"""scripts/device/cifar_pack.py: the lossless transfer format the GPU runs' data travelled in."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from tests import synth
from tests.test_docs import load_script


def _batch(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_pack_then_unpack_gives_back_every_batch_exactly(tmp_path):
    """Each batch's pixels, labels and batch label come back byte for byte (the colour transform and
    the predictor wrap modulo 256, so saturated pixels round-trip too), and batches.meta travels raw."""
    cifar_pack = load_script("device/cifar_pack.py")
    members = synth.make_members(n_train=60, n_test=20)
    src = synth.write_folder(tmp_path / "src", members)
    first = _batch(src / "data_batch_1")
    first[b"data"][:2] = np.array([0, 255], np.uint8).repeat(3072 // 2)  # extremes next to each other
    (src / "data_batch_1").write_bytes(pickle.dumps(first))
    names = [*synth.TRAIN_NAMES, "test_batch"]
    cifar_pack.pack(src, tmp_path / "part", names)
    shutil.copyfile(src / "batches.meta", tmp_path / "part" / "batches.meta.raw")
    cifar_pack.unpack(tmp_path / "part", tmp_path / "dest")
    for name in names:
        before, after = _batch(src / name), _batch(tmp_path / "dest" / name)
        assert np.array_equal(before[b"data"], after[b"data"]) and after[b"data"].dtype == np.uint8
        assert list(before[b"labels"]) == after[b"labels"] and before[b"batch_label"] == after[b"batch_label"]
    assert (tmp_path / "dest" / "batches.meta").read_bytes() == members["batches.meta"]


def test_unpack_refuses_pixels_that_do_not_hash_as_packed(tmp_path):
    cifar_pack = load_script("device/cifar_pack.py")
    src = synth.write_folder(tmp_path / "src", synth.make_members(n_train=10, n_test=10))
    cifar_pack.pack(src, tmp_path / "part", ["test_batch"])
    meta_path = tmp_path / "part" / "test_batch.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "sha256": "0" * 64}))
    with pytest.raises(SystemExit, match="test_batch does not decode to the pixels that were packed"):
        cifar_pack.unpack(tmp_path / "part", tmp_path / "dest")
    assert not (tmp_path / "dest" / "test_batch").exists()
