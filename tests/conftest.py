"""Shared fixtures: a synthetic archive and a prepared data folder built from it once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import synth  # noqa: E402

SHARED_ARCHIVE = ROOT.parent / "shared" / "cifar10" / "cifar-10-python-rebuilt.tar.gz"
needs_shared = pytest.mark.skipif(not SHARED_ARCHIVE.is_file(),
                                  reason="shared CIFAR-10 archive not present (../shared/cifar10)")

N_TRAIN, N_TEST = 500, 100


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`).

    The 2-core test machine is shared; with another job running, 111 training steps of the
    synthetic model took 28.7 s on 2 threads (oversubscribed) and 2.1 s on 1.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": synth.make_split(N_TRAIN, seed=0), "test": synth.make_split(N_TEST, seed=1)}


@pytest.fixture(scope="session")
def synth_archive(tmp_path_factory, synth_splits) -> Path:
    path = tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz"
    return synth.write_archive(path, synth.make_members(train=synth_splits["train"], test=synth_splits["test"]))


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory, synth_archive) -> Path:
    """A data folder prepared from the synthetic archive (500 train / 100 test images)."""
    from pipeline.prepare import prepare

    out = tmp_path_factory.mktemp("data")
    prepare(str(synth_archive), out, check_counts=False, log=lambda m: None)
    return out
