"""A torchsummary-style table, via torchinfo (maintained, handles nested modules)."""

from __future__ import annotations

from torch import nn


def summary_table(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> str:
    from torchinfo import summary

    stats = summary(model, input_size=input_size, depth=3, verbose=0, device="cpu",
                    col_names=("output_size", "num_params"), row_settings=("var_names",))
    # torchinfo 1.8 prints its unit enum ("Units.MEGABYTES") for mult-adds; it means millions.
    return str(stats).replace("mult-adds (Units.MEGABYTES)", "mult-adds (M)")
