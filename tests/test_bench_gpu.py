"""`bench gpu` on the CPU with a tiny budget: every section runs, and the race probe can fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.gpu import bench_gpu, compile_decision, device_memory, format_decision, race_probe


def test_bench_gpu_runs_every_section_on_cpu(prepared_dir):
    lines: list[str] = []
    out = bench_gpu(prepared_dir, steps=1, epochs=1, compile=False, norms=("layer", "batch"), subset=256,
                    test_subset=50, max_steps=1, device="cpu", batch_size=16, log=lines.append)
    grid = {(r["norm"], r["format"], r["mode"]) for r in out["model_only"]}
    assert grid == {(n, f, "eager") for n in ("layer", "batch") for f in ("channels-last", "NCHW")}
    assert all(r["img_s"] > 0 for r in out["model_only"])
    assert out["loader_fed"]["ratio"] > 0 and out["loader"] in ("ffcv", "torch")
    assert out["race_probe"]["labels_checked"] > 0 and out["race_probe"]["wrong_labels"] == 0
    assert [e["epoch"] for e in out["run"]["epochs"]] == [1] and 0 <= out["run"]["epochs"][0]["test_acc"] <= 1
    assert out["versions"]["torch"] == torch.__version__
    # train's own step: build_parts' optimizer (unfused SGD on the CPU), the trainer's loader workers
    assert all(r["fused_sgd"] is False and r["warmup_s"] >= 0 for r in out["model_only"])
    assert out["loader_fed"]["fused_sgd"] is False and out["loader_fed"]["workers"] >= 1
    # one decision per norm, each with its printed line
    assert [d["norm"] for d in out["format_decision"]] == ["layer", "batch"]
    assert all(d["decision"] in lines[i] for d in out["format_decision"] for i in [lines.index("  " + d["decision"])])
    assert out["compile_decision"] == [] and "  compile: not measured (--no-compile)" in lines
    io = out["epoch_io"]
    assert set(io) == {"checkpoint_mb", "blocked_s", "background_write_s", "snapshot_s", "sync_write_s"}
    assert all(isinstance(v, float) and v >= 0 for v in io.values()) and io["checkpoint_mb"] > 1
    assert out["device_memory"] == [] and out["gpu_processes"] is None  # no CUDA here


def _rows(**rates: float) -> list[dict]:
    """Fake grid rows: key norm_format_mode (format cl/nchw) → img/s; warm-up 2 s eager, 40 s compiled."""
    fmt = {"cl": "channels-last", "nchw": "NCHW"}
    return [{"norm": n, "format": fmt[f], "mode": m, "img_s": rate, "warmup_s": 40.0 if m == "compile" else 2.0}
            for n, f, m, rate in (key.split("_") + [value] for key, value in rates.items())]


def test_compile_decision_follows_the_rows_at_trains_format():
    cuda = torch.device("cuda", 0)
    # layer norm trains NCHW on CUDA: 1.5x there (the channels-last rows do not count)
    rows = _rows(layer_nchw_eager=10_000.0, layer_nchw_compile=15_000.0, layer_cl_eager=1.0, layer_cl_compile=1.0,
                 batch_cl_eager=10_000.0, batch_cl_compile=10_100.0)
    layer, batch = compile_decision(rows, cuda)
    assert (layer["format"], batch["format"]) == ("NCHW", "channels-last")
    assert layer["compile_over_eager"] == pytest.approx(1.5) and layer["compile_s"] == pytest.approx(38.0)
    assert layer["saved_per_run_s"] == pytest.approx(2e6 / 10_000 - 2e6 / 15_000)  # 66.7 s > 38 s
    assert layer["pays"] and layer["decision"].endswith("→ make --compile the CUDA default")
    assert layer["decision"].startswith("compile: 1.50× eager for layer norm (NCHW)")
    assert not batch["pays"] and batch["decision"].endswith("→ keep eager default")  # 1.01x: within the margin
    # faster, but a short run does not repay the compile
    (short,) = compile_decision(_rows(layer_nchw_eager=10_000.0, layer_nchw_compile=15_000.0), cuda, run_images=50_000)
    assert not short["pays"] and "keep eager default" in short["decision"]
    # eager rows only (--no-compile): nothing to decide; on the CPU the line says it decides nothing for CUDA
    assert compile_decision(_rows(layer_nchw_eager=1.0, layer_cl_eager=1.0), cuda) == []
    (cpu,) = compile_decision(_rows(layer_cl_eager=1.0, layer_cl_compile=2.0), torch.device("cpu"))
    assert cpu["format"] == "channels-last" and "[CPU" in cpu["decision"]


def test_format_decision_line_says_keep_or_switch():
    cuda = torch.device("cuda", 0)
    layer, batch = format_decision(_rows(layer_cl_eager=120.0, layer_nchw_eager=100.0, batch_cl_eager=120.0,
                                         batch_nchw_eager=100.0), cuda)
    assert layer["decision"] == ("format: channels-last 1.20× NCHW for layer norm (eager) → switch layer norm to "
                                 "channels-last (training/device.py default_channels_last)")
    assert batch["decision"].endswith("→ keep the channels-last default")


def test_device_memory_lists_every_visible_device(monkeypatch):
    assert device_memory() == []  # CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: [5 << 20, 0][i])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: [8 << 20, 0][i])
    assert device_memory() == [{"device": 0, "max_allocated_bytes": 5 << 20, "reserved_bytes": 8 << 20},
                               {"device": 1, "max_allocated_bytes": 0, "reserved_bytes": 0}]


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
