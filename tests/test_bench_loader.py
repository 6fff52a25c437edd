"""`bench loader` on a small prepared set: every row a user reads is there, per thread count."""

from __future__ import annotations

import numba
import pytest

pytest.importorskip("ffcv")

from bench.loader import bench_loader  # noqa: E402


def test_bench_loader_table_covers_one_and_two_workers(prepared_dir):
    lines: list[str] = []
    out = bench_loader(prepared_dir, batch_size=100, epochs=1, tv_limit=200, rounds=1, torch_path=False,
                       log=lines.append)
    assert [r["workers"] for r in out["by_workers"]] == [1, 2]
    for row in out["by_workers"]:
        for key in ("ffcv_augmented_img_s", "ffcv_no_aug_img_s", "torchvision_img_s", "op_alone_img_s"):
            assert row[key] > 0, key
    assert set(out["per_worker_scaling"]) == {"augmented", "no_aug", "op_alone"}
    # the layer that ran is named, so figures from different machines can be compared
    assert out["threading_layer"] == numba.threading_layer()
    assert any(line.startswith("numba threading layer: ") for line in lines)
    assert any("(e)" in line for line in lines[-3:])  # the scaling summary includes the op alone
