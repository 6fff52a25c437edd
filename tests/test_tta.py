"""models/tta.py: which views test-time augmentation scores, and how their logits combine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.tta import extra_views, tta_logits, tta_name


def _image() -> torch.Tensor:
    return torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).reshape(2, 3, 6, 5)


def test_flip_tta_adds_only_the_mirror():
    x = _image()
    (mirror,) = extra_views(x, 0)
    assert torch.equal(mirror[..., 0], x[..., -1]) and torch.equal(mirror.flip(3), x)


def test_shifted_views_are_translations_by_the_shift_with_reflected_borders():
    """Up-left shows the image moved one pixel right and down (its top row and left column the
    reflect-pad's), down-right the opposite; each is followed by its mirror; shapes are kept."""
    x = _image()
    mirror, ul, ul_m, dr, dr_m = extra_views(x, 1)
    assert all(v.shape == x.shape for v in (mirror, ul, ul_m, dr, dr_m))
    assert torch.equal(ul[..., 1:, 1:], x[..., :-1, :-1])
    assert torch.equal(ul[..., 0, 1:], x[..., 1, :-1])  # reflect: row -1 mirrors row 1
    assert torch.equal(dr[..., :-1, :-1], x[..., 1:, 1:])
    assert torch.equal(ul_m, ul.flip(3)) and torch.equal(dr_m, dr.flip(3))
    two = extra_views(x, 2)
    assert torch.equal(two[1][..., 2:, 2:], x[..., :-2, :-2]) and torch.equal(two[3][..., :-2, :-2], x[..., 2:, 2:])


class _Probe(nn.Module):
    """Logits that reveal which view they came from: (sum of the top-left pixel, sum of the image)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, :, 0, 0].sum(1), x.sum((1, 2, 3))], 1)


def test_logits_combine_as_airbench_weights_them():
    """Flip only: (plain + mirror) / 2. With shifts: that halved, plus the four shifted views'
    mean halved. The plain logits are the caller's, not recomputed."""
    x, model = _image(), _Probe()
    plain = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])  # not model(x): it must be used as given
    views = [model(v) for v in extra_views(x, 1)]
    torch.testing.assert_close(tta_logits(model, x, plain, 0), (plain + views[0]) / 2)
    torch.testing.assert_close(tta_logits(model, x, plain, 1),
                               (plain + views[0]) / 4 + (views[1] + views[2] + views[3] + views[4]) / 8)


def test_precision_and_prepare_wrap_every_extra_forward():
    entered, prepared = [], []

    class Ctx:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    def prepare(t):
        prepared.append(t.shape)
        return t

    tta_logits(_Probe(), _image(), torch.zeros(2, 2), 1, precision=Ctx, prepare=prepare)
    assert entered == [1] and len(prepared) == 5


def test_names_and_bounds():
    assert tta_name(0) == "flip TTA" and tta_name(1) == "flip + 1-px shift TTA"
    with pytest.raises(ValueError, match="between 0 and 8"):
        tta_logits(_Probe(), _image(), torch.zeros(2, 2), 9)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("amp", [None, True, False])
@pytest.mark.parametrize("channels_last", [None, True, False])
def test_evaluate_runs_the_views_as_a_cpu_training_run_did(monkeypatch, native, amp, channels_last):
    """analysis (which may not import training) runs the views in training's CPU precision and
    memory format: the two must agree for every setting and CPU."""
    from types import SimpleNamespace

    import common.hardware
    import training.device
    from analysis.inspection.test_predictions import tta_views
    from common.config import TrainConfig

    monkeypatch.setattr(common.hardware, "cpu_has_native_bf16", lambda: native)
    cfg = TrainConfig()
    cfg.run.amp, cfg.run.channels_last, cfg.run.tta_shift = amp, channels_last, 1
    views = tta_views(SimpleNamespace(run=SimpleNamespace(train_config=lambda: cfg)))
    setup = training.device.resolve_device("cpu", amp, channels_last, cfg.model.norm)
    assert views.bf16 == (setup.amp_dtype is torch.bfloat16) and views.channels_last == setup.channels_last
    assert views.shift == 1 and tta_views(SimpleNamespace(run=SimpleNamespace(train_config=lambda: cfg)), 0).shift == 0
