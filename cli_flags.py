"""The flags `train` and `compare` share, as one table: flag → TrainConfig field.

Each row is spelled once: its typer option, its config field and its help text come from here,
and the default shown in `--help` is read from TrainConfig itself (and from each recipe where it
differs). Every flag defaults to None, meaning "not given": a flag the user did not type never
overrides what `--recipe` chose. On `--resume`, only the run-environment flags
(`common.config.ENVIRONMENT`) are applied; the recipe flags are the run's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from common.config import ENVIRONMENT, RECIPES, TrainConfig, apply_recipe
from common.errors import UserError


def parse_fill(fill: str) -> tuple[int, int, int] | None:
    if fill == "mean":
        return None
    try:
        values = tuple(int(v) for v in fill.split(","))
    except ValueError:
        raise UserError(f"--fill must be 'mean' or three integers R,G,B in 0-255, got {fill!r}") from None
    if len(values) != 3:
        raise UserError(f"--fill must be 'mean' or three integers R,G,B in 0-255, got {fill!r}")
    return values[0], values[1], values[2]


@dataclass(frozen=True)
class Flag:
    name: str  # the Python parameter; the flag is --name-with-dashes
    target: tuple[str, str] | None  # (TrainConfig section, field); None: not a config field
    kind: Any  # the annotation typer parses (always Optional: None = not given)
    help: str
    decls: tuple[str, ...] = ()  # explicit spellings, e.g. "--flip/--no-flip"
    parse: Callable[[Any], Any] | None = None  # flag value → field value


FLAGS: tuple[Flag, ...] = (
    Flag("data", ("data", "data_dir"), Path | None, "Folder written by `prepare`.", parse=str),
    Flag("epochs", ("optim", "epochs"), int | None, "Epochs to train (with --resume: raise the budget)."),
    Flag("batch_size", ("optim", "batch_size"), int | None, "Images per step (per process under torchrun)."),
    Flag("lr", ("optim", "lr"), float | None, "SGD learning rate (the peak with --schedule onecycle)."),
    Flag("schedule", ("optim", "schedule"), str | None,
         "plateau: ReduceLROnPlateau on the deciding split, per epoch. onecycle: per step, linear warm-up from 0 "
         "to --lr over the first --peak-at of the steps, then linear decay to 0."),
    Flag("peak_at", ("optim", "peak_at"), float | None, "With --schedule onecycle: the fraction of the run's steps "
         "spent warming up to the peak lr."),
    Flag("momentum", ("optim", "momentum"), float | None, "SGD momentum."),
    Flag("nesterov", ("optim", "nesterov"), bool | None, "Nesterov momentum.", ("--nesterov/--no-nesterov",)),
    Flag("weight_decay", ("optim", "weight_decay"), float | None, "SGD weight decay."),
    Flag("decay_all", ("optim", "decay_all"), bool | None,
         "Weight decay on every parameter; --no-decay-all: on conv/linear weights only (not norm scales/shifts, "
         "biases).", ("--decay-all/--no-decay-all",)),
    Flag("ema", ("optim", "ema"), float | None,
         "Decay of an exponential moving average of the weights, updated every step (e.g. 0.999; 0 = off), "
         "warmed up as min(decay, (1 + n) / (10 + n)) after n updates. "
         "When on, evaluation, best.pt and the analysis commands use the averaged weights."),
    Flag("label_smoothing", ("optim", "label_smoothing"), float | None, "Cross-entropy label smoothing."),
    Flag("plateau_factor", ("optim", "plateau_factor"), float | None, "ReduceLROnPlateau factor."),
    Flag("plateau_patience", ("optim", "plateau_patience"), int | None, "ReduceLROnPlateau patience, in epochs."),
    Flag("plateau_threshold", ("optim", "plateau_threshold"), float | None, "ReduceLROnPlateau relative threshold."),
    Flag("warmup_steps", ("optim", "warmup_steps"), int | None, "Linear lr warm-up over the first N steps of the run."),
    Flag("scale_lr", ("optim", "scale_lr"), bool | None,
         "Under torchrun with K processes, train at K × --lr (linear scaling rule; pair it with --warmup-steps).",
         ("--scale-lr/--no-scale-lr",)),
    Flag("norm", ("model", "norm"), str | None, "Normalisation: layer (GroupNorm(1,C)), group, batch."),
    Flag("groups", ("model", "groups"), int | None, "Groups for --norm group."),
    Flag("shortcut_norm", ("model", "shortcut_norm"), str | None,
         "Norm of the 3 projection shortcuts: same (as --norm), layer, group or batch (the original assignment's)."),
    Flag("width", ("model", "width"), int | None,
         "Channels of the first stage (the stages have 1, 2, 4, 8 × this); 64 is ResNet-18 as published. "
         "Smaller trains faster and learns less: for smoke runs."),
    Flag("zero_init", ("model", "zero_init"), bool | None,
         "Zero-init the last norm of each residual block.", ("--zero-init/--no-zero-init",)),
    Flag("weight_std", ("model", "weight_std"), bool | None,
         "Weight Standardization: every conv filter centred and scaled to unit variance before use (no extra "
         "parameters).", ("--weight-std/--no-weight-std",)),
    Flag("recipe", None, str | None, f"A named preset ({', '.join(RECIPES)}); 'assignment' is the original "
         "assignment exactly; 'fast' is time to accuracy (weight-standardized convs, one-cycle schedule, "
         "15 epochs on all training images). Flags given beside it override it."),
    Flag("crop", ("augment", "crop"), bool | None, "Random pad + crop.", ("--crop/--no-crop",)),
    Flag("pad", ("augment", "pad"), int | None, "Padding for the random crop."),
    Flag("flip", ("augment", "flip"), bool | None, "Random horizontal flip.", ("--flip/--no-flip",)),
    Flag("flip_p", ("augment", "flip_p"), float | None, "Flip probability."),
    Flag("alternate_flip", ("augment", "alternate_flip"), bool | None,
         "With --flip: draw each image's flip once (from --seed) and invert it every other epoch, so any two "
         "consecutive epochs show each image both ways (airbench's alternating flip); off: drawn anew each epoch.",
         ("--alternate-flip/--no-alternate-flip",)),
    Flag("rotate", ("augment", "rotate"), bool | None, "Random rotation.", ("--rotate/--no-rotate",)),
    Flag("max_angle", ("augment", "max_angle"), float | None, "Largest rotation in degrees."),
    Flag("cutout", ("augment", "cutout"), bool | None, "Cutout.", ("--cutout/--no-cutout",)),
    Flag("cutout_size", ("augment", "cutout_size"), int | None, "Cutout square side."),
    Flag("cutout_p", ("augment", "cutout_p"), float | None, "Cutout probability."),
    Flag("fill", ("augment", "fill"), str | None, "Fill for pad/rotation/cutout: 'mean' (the train mean pixel) or R,G,B.",
         parse=parse_fill),
    Flag("border", ("augment", "border"), str | None,
         "Outside the image, pad+crop and rotation see: constant (--fill) or reflect (reflect-101)."),
    Flag("min_res", ("augment", "min_res"), int | None,
         "Progressive resizing: train the first --res-ramp-start of the epochs on images downscaled to this many "
         "pixels a side, then ramp linearly to full size at --res-ramp-end (0 = off; the test set is always scored "
         "at full size)."),
    Flag("res_ramp_start", ("augment", "res_ramp_start"), float | None,
         "Fraction of the epochs trained at --min-res (rounded to whole epochs)."),
    Flag("res_ramp_end", ("augment", "res_ramp_end"), float | None,
         "Fraction of the epochs after which training is at full size (the ramp, rounded to multiples of 4 pixels, "
         "may get there sooner)."),
    Flag("subset", ("data", "subset"), int | None, "Train on the first N training images only."),
    Flag("val", ("data", "val"), int | None,
         "Training images held out as a class-stratified validation split (from --seed); the plateau scheduler "
         "and best.pt follow it. 0: decide on the test set (the original assignment's habit)."),
    Flag("test_subset", ("data", "test_subset"), int | None, "Evaluate on the first N test images only (quick CPU runs)."),
    Flag("max_steps", ("optim", "max_steps"), int | None, "At most this many steps per epoch (quick looks)."),
    Flag("workers", ("data", "workers"), int | None, "Loader threads."),
    Flag("loader", ("data", "loader"), str | None,
         "Data path: ffcv (numba threads on the host), torch (tensor ops on the training device; needs no FFCV), "
         "auto (FFCV where it imports and the data has betons, else torch)."),
    Flag("seed", ("run", "seed"), int | None, "Seed for init, shuffling and augmentation."),
    Flag("device", ("run", "device"), str | None, "auto (CUDA when usable), cpu, cuda, cuda:N."),
    Flag("amp", ("run", "amp"), bool | None,
         "Mixed precision: bf16 autocast (fp16 + GradScaler on GPUs without native bf16). A CPU has native bf16 "
         "with AVX512-BF16 or AMX (measured 2x faster there, same learning); elsewhere the default is fp32.",
         ("--amp/--no-amp",)),
    Flag("channels_last", ("run", "channels_last"), bool | None,
         "Memory format: channels-last (measured faster on the CPU) or NCHW (on CUDA for layer and group norm, "
         "whose CUDA kernel has no channels-last path).",
         ("--channels-last/--no-channels-last",)),
    Flag("compile", ("run", "compile"), bool | None, "torch.compile the model.", ("--compile/--no-compile",)),
    Flag("tensorboard", ("run", "tensorboard"), bool | None, "Write TensorBoard event files under RUN/tb/.",
         ("--tensorboard/--no-tensorboard",)),
    Flag("test_every", ("run", "test_every"), str | None,
         "When to score the test set: epoch (every epoch), or needed (when it decides the LR, at the final epoch and "
         "at new bests on validation)."),
    Flag("tta", ("run", "tta"), bool | None,
         "Each test pass also scores flip test-time augmentation (each image's and its mirror's softmax averaged; a "
         "second forward), reported beside the plain accuracy in the epoch line, metrics.csv and summary.json.",
         ("--tta/--no-tta",)),
    Flag("tta_shift", ("run", "tta_shift"), int | None,
         "With --tta, also score each image shifted by this many pixels up-left and down-right, each with its "
         "mirror (airbench's TTA: five extra forwards; 0 = flip only)."),
    Flag("quiet", None, bool | None, "No progress output.", ("--quiet/--no-quiet",)),
)


# Fields whose TrainConfig default is None because the value is decided when the run starts: the
# rule that decides it, as `--help` shows it (instead of "none").
COMPUTED_DEFAULTS = {
    "fill": "mean, the train-mean pixel",
    "val": "5,000, or a tenth of the training images (after --subset) when that is fewer",
    "subset": "all training images",
    "test_subset": "all test images",
    "max_steps": "no limit",
    "workers": "the cores this process may use",
    "amp": "on for CUDA and for CPUs with native bf16, off elsewhere",
    "channels_last": "on, except NCHW for --norm layer and group on CUDA",
    "test_every": "epoch on the CPU, needed on CUDA",
}


def _default_text(flag: Flag) -> str:
    if flag.target is None:
        return {"recipe": "default"}.get(flag.name, "")
    section, field = flag.target
    base = getattr(getattr(TrainConfig(), section), field)
    texts = [COMPUTED_DEFAULTS[flag.name] if base is None and flag.name in COMPUTED_DEFAULTS else _show(base)]
    for recipe in RECIPES[1:]:
        value = getattr(getattr(apply_recipe(TrainConfig(), recipe), section), field)
        if value != base:
            texts.append(f"{_show(value)} with --recipe {recipe}")
    return "; ".join(texts)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def with_train_flags(*exclude: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Append the shared flags (less `exclude`) to fn's signature; typer reads __signature__, fn
    receives them as **flags. One table, so train and compare cannot drift apart."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        shared = []
        for flag in FLAGS:
            if flag.name in exclude:
                continue
            default = _default_text(flag)
            help_text = f"{flag.help} (default: {default})" if default else flag.help
            option = typer.Option(None, *flag.decls, help=help_text, show_default=False)
            shared.append(inspect.Parameter(flag.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=flag.kind))
        params = own + shared
        fn.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn

    return decorate


def train_config(values: dict[str, Any]) -> TrainConfig:
    """Flags → TrainConfig: the recipe first, then every flag the user actually gave."""
    cfg = apply_recipe(TrainConfig(), values.get("recipe") or "default")
    for flag in FLAGS:
        value = values.get(flag.name)
        if value is None or flag.target is None:
            continue
        section, field = flag.target
        setattr(getattr(cfg, section), field, flag.parse(value) if flag.parse else value)
    return cfg


def given_environment(values: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """The run-environment flags the user gave: what `--resume` may change."""
    return {flag.target: values[flag.name] for flag in FLAGS
            if flag.target in ENVIRONMENT and values.get(flag.name) is not None}


def environment_flags() -> list[str]:
    """The flags --resume accepts besides --epochs, as the user types them."""
    return ["--" + f.name.replace("_", "-") for f in FLAGS if f.target in ENVIRONMENT]


def given_recipe_flags(values: dict[str, Any]) -> list[str]:
    """Flags given with --resume that it cannot honour (they would change what the run learns)."""
    allowed = {"epochs", "quiet"} | {f.name for f in FLAGS if f.target in ENVIRONMENT}
    return ["--" + f.name.replace("_", "-") for f in FLAGS if values.get(f.name) is not None and f.name not in allowed]
