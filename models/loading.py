"""Rebuild a trained model from its run directory.

It lives with the models, not in `common/`: the run directory is a contract that must stay free
of torch and of the model code, while rebuilding needs both.
"""

from __future__ import annotations

from torch import nn

from common.errors import UserError
from common.rundir import RunDir
from models.resnet import build_model


def load_run_model(run: RunDir, which: str = "best", averaged: bool = True) -> nn.Module:
    """The run's model from config.json with the checkpoint's weights, in eval mode (`best` falls
    back to `last` when no epoch improved yet). A run trained with --ema gives its averaged weights
    (what its evaluation scored; RunDir.weights_label says so), or with `averaged=False` the raw
    weights the optimizer trained (`evaluate --raw-weights`), which its checkpoints keep too."""
    cfg = run.train_config()
    model = build_model(cfg.model)
    if which == "best" and not run.has_checkpoint("best"):
        which = "last"
    state = run.load_checkpoint(which)
    try:
        model.load_state_dict(state["ema"] if averaged and "ema" in state else state["model"])
    except RuntimeError:
        raise UserError(f"{run.checkpoint_path(which)} does not match the model in config.json "
                        f"(norm={cfg.model.norm}); the run directory mixes files from different runs") from None
    return model.eval()
