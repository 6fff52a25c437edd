"""`bench gpu` on the CPU with a tiny budget: every section runs, and the race probe can fail."""

from __future__ import annotations

import numpy as np
import torch

from bench.gpu import bench_gpu, race_probe


def test_bench_gpu_runs_every_section_on_cpu(prepared_dir):
    lines: list[str] = []
    out = bench_gpu(prepared_dir, steps=1, epochs=1, compile=False, norms=("layer", "batch"), subset=256,
                    test_subset=50, max_steps=1, device="cpu", log=lines.append)
    grid = {(r["norm"], r["format"], r["mode"]) for r in out["model_only"]}
    assert grid == {(n, f, "eager") for n in ("layer", "batch") for f in ("channels-last", "NCHW")}
    assert all(r["img_s"] > 0 for r in out["model_only"])
    assert out["loader_fed"]["ratio"] > 0 and out["loader"] in ("ffcv", "torch")
    assert out["race_probe"]["labels_checked"] > 0 and out["race_probe"]["wrong_labels"] == 0
    assert [e["epoch"] for e in out["run"]["epochs"]] == [1] and 0 <= out["run"]["epochs"][0]["test_acc"] <= 1
    assert out["versions"]["torch"] == torch.__version__


class _StaleLoader:
    """Hands out the previous batch's labels from batch 2 on: what an overwritten buffer looks like."""

    device = torch.device("cpu")
    batch_size = 4

    def __init__(self, labels: np.ndarray):
        self.labels = labels
        self.perm = np.random.default_rng(0).permutation(len(labels))

    def order(self) -> np.ndarray:
        return self.perm

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def __iter__(self):
        for i in range(len(self)):
            j = max(i - 1, 0) if i >= 2 else i
            idx = self.perm[j * 4:(j + 1) * 4]
            yield torch.zeros(4, 3, 32, 32), torch.from_numpy(self.labels[idx])


def test_race_probe_counts_labels_that_do_not_match_the_order():
    labels = np.arange(40) % 10
    probe = race_probe(_StaleLoader(labels), labels, batches=10)
    assert probe["labels_checked"] == 40 and probe["wrong_labels"] > 0
