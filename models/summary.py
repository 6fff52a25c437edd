"""A torchsummary-style table, via torchinfo (maintained, handles nested modules)."""

from __future__ import annotations

from torch import nn

from common.config import ModelConfig


def describe_norms(cfg: ModelConfig) -> str:
    """One line naming where each norm sits: the table alone shows class names, and a GroupNorm
    row does not say whether it is LayerNorm (1 group)."""
    names = {"layer": "LayerNorm (GroupNorm(1, C))", "group": f"GroupNorm({cfg.groups}, C)", "batch": "BatchNorm2d"}
    shortcut = cfg.norm if cfg.shortcut_norm == "same" else cfg.shortcut_norm
    init = "zero-init last norm per block" if cfg.zero_init else "no zero-init"
    convs = "; weight-standardized convs" if cfg.weight_std else ""
    return (f"ResNet-18: {names[cfg.norm]} on the stem and main path, {names[shortcut]} on the 3 projection "
            f"shortcuts; {init}{convs}")


def summary_table(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> str:
    from torchinfo import summary

    stats = summary(model, input_size=input_size, depth=3, verbose=0, device="cpu",
                    col_names=("output_size", "num_params"), row_settings=("var_names",))
    # torchinfo 1.8 prints its unit enum ("Units.MEGABYTES") for mult-adds; it means millions.
    return str(stats).replace("mult-adds (Units.MEGABYTES)", "mult-adds (M)")
