"""Old run folders read as today's: one upgrade step, applied where config.json is read.

A field added to config.json after runs were already written is absent from those runs, and its
absence meant something then. Each rule below fills in that meaning, so the rest of the code sees
only the current format and never asks whether a field is there. `RunDir.read_config` applies it;
a resume that rewrites config.json (training/run_setup.py `record_resume`) then stores the
upgraded record.

| field                      | absent means                                                        |
|----------------------------|---------------------------------------------------------------------|
| train.data.val             | 0: runs before the validation split decided on the test set          |
| train.model.shortcut_norm  | "same": the shortcuts had the main path's norm                       |
| loader                     | "ffcv": the only data path then                                      |
| precision                  | --amp had no CPU meaning (amp=True meant "on CUDA only"): a run      |
|                            | written on a CPU keeps training in fp32 (train.run.amp = false)      |

One field changed meaning: train.augment.res_ramp_start/_end were epochs in the first runs with
progressive resizing (a value above 1) and are fractions of train.optim.epochs now; such a record
is divided by its epochs, which gives the same epochs back.
"""

from __future__ import annotations

import copy
from typing import Any


def upgrade_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of config.json's record in the current format (see the table above)."""
    config = copy.deepcopy(raw)
    train = config.get("train")
    if not isinstance(train, dict):
        return config
    for section in ("data", "model", "run"):
        if not isinstance(train.get(section), dict):
            train[section] = {}
    train["data"].setdefault("val", 0)
    train["model"].setdefault("shortcut_norm", "same")
    config.setdefault("loader", "ffcv")
    if "precision" not in config and str(config.get("device", "CPU")).startswith("CPU"):
        train["run"]["amp"] = False
    augment, epochs = train.get("augment"), train.get("optim", {}).get("epochs")
    if isinstance(augment, dict) and isinstance(epochs, int) and epochs > 0 and augment.get("min_res") \
            and isinstance(augment.get("res_ramp_end"), int | float) and augment["res_ramp_end"] > 1:
        for key in ("res_ramp_start", "res_ramp_end"):
            augment[key] = augment.get(key, 0) / epochs
    return config
