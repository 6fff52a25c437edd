"""Plain dataclass configs with their defaults in one place.

The CLI fills them from flags, `config.json` in a run directory is their serialisation, and a run
is rebuilt from that file with `TrainConfig.from_dict`. Nothing here imports torch or FFCV, so
reading a config is instant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from common.errors import UserError

NORMS = ("layer", "group", "batch")
BORDERS = ("constant", "reflect")
LOADERS = ("ffcv", "torch", "auto")
SCHEDULES = ("plateau", "onecycle")
TEST_EVERY = ("epoch", "needed")
# Upper bounds for integer flags: far beyond any real use, low enough that no value overflows the
# int64 (or uint32 seed) it ends up in, and an `--epochs 1e23`-style typo is refused in one line
# instead of starting a run that never ends.
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_COUNT = 1_000_000_000  # images (--subset, --test-subset, --val) and steps (--max-steps, --warmup-steps)
MAX_WORKERS = 1024
MAX_TTA_SHIFT = 8  # pixels; reflect padding needs less than the image side, and past 8 a shifted view is one the
# pad-4 training crop never showed
MAX_WIDTH = 1024  # channels of the first stage (the last has 8 times as many)
MAX_SEED = 2**32 - 1


def check_at_most(flag: str, value: int | None, limit: int, what: str = "") -> None:
    """Refuse an integer flag above `limit`, naming the flag and the bound."""
    if value is not None and value > limit:
        raise UserError(f"--{flag} must be at most {limit:,}{what}, got {value:,}")


@dataclass
class AugmentConfig:
    """Train-time augmentation; every op can be switched off or resized."""

    crop: bool = True
    pad: int = 4
    flip: bool = True
    flip_p: float = 0.5
    # Each image's flip drawn once (from the seed) and inverted every other epoch, so two consecutive
    # epochs show it both ways (airbench's alternating flip); False: drawn anew each epoch.
    alternate_flip: bool = False
    rotate: bool = True
    max_angle: float = 5.0
    cutout: bool = True
    cutout_size: int = 16
    cutout_p: float = 0.5
    # RGB value (0-255) used for padding, rotation corners and cutout. None = the train set's
    # mean pixel, which normalises to zero and so carries no signal.
    fill: tuple[int, int, int] | None = None
    # What pad+crop and rotation see outside the image: "constant" (`fill`) or "reflect"
    # (reflect-101, OpenCV's BORDER_REFLECT_101: albumentations' default, the original assignment's).
    # Cutout always paints `fill`.
    border: str = "constant"
    # Progressive resizing (training/resolution.py): the first res_ramp_start of the epochs train
    # on images downscaled to min_res pixels a side, those from res_ramp_end of them on at full
    # size, those between on a linear ramp rounded to multiples of 4 (which may reach full size
    # sooner). Fractions of the run's epochs, so --epochs N stretches it as it does the lr schedule.
    # min_res 0 = off.
    min_res: int = 0
    res_ramp_start: float = 0.0
    res_ramp_end: float = 0.0

    def validate(self) -> None:
        if self.min_res != 0 and not 8 <= self.min_res <= 4096:
            raise UserError(f"--min-res must be 0 (off) or a side of at least 8 pixels, got {self.min_res}")
        if self.min_res and not 0.0 <= self.res_ramp_start < self.res_ramp_end <= 1.0:
            raise UserError("--res-ramp-start and --res-ramp-end must be fractions of the run's epochs with "
                            f"0 <= start < end <= 1, got {self.res_ramp_start} and {self.res_ramp_end}")
        if not 0 <= self.pad <= 16:
            raise UserError(f"--pad must be between 0 and 16, got {self.pad}")
        for name in ("flip_p", "cutout_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"--{name.replace('_', '-')} must be a probability in [0, 1], got {value}")
        if not 0.0 <= self.max_angle <= 180.0:
            raise UserError(f"--max-angle must be between 0 and 180 degrees, got {self.max_angle}")
        if not 1 <= self.cutout_size <= 32:
            raise UserError(f"--cutout-size must be between 1 and 32, got {self.cutout_size}")
        if self.border not in BORDERS:
            raise UserError(f"--border must be one of {', '.join(BORDERS)}, got {self.border!r}")
        if self.fill is not None and (len(self.fill) != 3 or not all(0 <= v <= 255 for v in self.fill)):
            raise UserError(f"--fill must be three values in 0-255 (R,G,B), got {self.fill}")

    @property
    def any(self) -> bool:
        return self.crop or self.flip or self.rotate or self.cutout

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(crop=False, flip=False, rotate=False, cutout=False)


@dataclass
class ModelConfig:
    norm: str = "layer"
    groups: int = 32  # only for norm="group"
    # Norm of the 3 projection shortcuts: "same" as the main path, or one of NORMS. BatchNorm by
    # default, as in the original assignment (its GroupNorm(1, C) model was LayerNorm on the main
    # path only); it also learned fastest of the shortcut choices measured (measurements:
    # docs/BENCHMARKS.md, 'learning per epoch against the original assignment').
    shortcut_norm: str = "batch"
    # Zero-init the last norm's scale in each residual block (Goyal et al. 2017, timm's zero_init_last):
    # with BatchNorm shortcuts it speeds up the first epochs (same section of docs/BENCHMARKS.md).
    zero_init: bool = True
    # Weight Standardization (Qiao et al. 2019, timm's StdConv2d): each conv filter is centred and
    # scaled to unit variance before use. On in `--recipe fast` (where it was measured: docs/
    # BENCHMARKS.md, "Weight Standardization"); off by default, so the default and assignment
    # recipes keep the original's convs.
    weight_std: bool = False
    # Channels of the first stage; the four stages have 1, 2, 4 and 8 times as many. 64 is ResNet-18
    # as published (11.2M parameters); a smaller width trains faster and learns less (smoke runs,
    # and the test suite's runs, which exercise the training machinery rather than the network).
    width: int = 64
    num_classes: int = 10  # set from the prepared data's class list (an image folder may have any number)

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.shortcut_norm not in ("same", *NORMS):
            raise UserError(f"unknown --shortcut-norm {self.shortcut_norm!r}; choose same, {', '.join(NORMS)}")
        if not 1 <= self.width <= MAX_WIDTH:
            raise UserError(f"--width must be between 1 and {MAX_WIDTH} (64: ResNet-18 as published), got {self.width}")
        if self.norm == "group":
            stages = [self.width * k for k in (1, 2, 4, 8)]
            if self.groups < 1 or any(channels % self.groups for channels in stages):
                raise UserError(f"--groups must divide every stage's channels ({', '.join(map(str, stages))}; "
                                f"e.g. 8, 16, 32 at width 64), got {self.groups}")


@dataclass
class OptimConfig:
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.03  # the peak lr with --schedule onecycle
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    # Weight decay on every parameter (False: on conv and linear weights only, not on norm
    # scales/shifts and biases, which decay would only pull toward zero without regularising).
    decay_all: bool = True
    label_smoothing: float = 0.0
    # "plateau": ReduceLROnPlateau on the deciding split's loss, once per epoch. "onecycle": per step,
    # linear warm-up from 0 to --lr over the first `peak_at` of the run's steps, then linear decay to 0
    # (training/schedule.py). A fixed schedule decides nothing from validation.
    schedule: str = "plateau"
    peak_at: float = 0.2
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    plateau_threshold: float = 0.001
    max_steps: int | None = None  # per epoch; for quick looks on a CPU
    # Exponential moving average of the weights, updated after every optimizer step with this decay
    # (0 = off; torch.optim.swa_utils, buffers averaged too). When on, evaluation, best.pt's choice
    # and the analysis commands use the averaged weights.
    ema: float = 0.0
    # Linear warm-up over the first N steps of the run (training/components.py: warmup_factor).
    warmup_steps: int = 0
    # torchrun with K processes: lr × K (Goyal et al.'s linear rule), so K× fewer, K× larger
    # steps per epoch keep the single-process dynamics; pair it with --warmup-steps.
    scale_lr: bool = False

    def validate(self) -> None:
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        check_at_most("epochs", self.epochs, MAX_EPOCHS)
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        check_at_most("batch-size", self.batch_size, MAX_BATCH, " images per step")
        check_at_most("max-steps", self.max_steps, MAX_COUNT)
        check_at_most("warmup-steps", self.warmup_steps, MAX_COUNT)
        check_at_most("plateau-patience", self.plateau_patience, MAX_EPOCHS, " epochs")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be at least 1, got {self.max_steps}")
        if not 0 < self.plateau_factor < 1:
            raise UserError(f"--plateau-factor must be in (0, 1), got {self.plateau_factor}")
        if self.plateau_patience < 0:
            raise UserError(f"--plateau-patience must be >= 0, got {self.plateau_patience}")
        if self.warmup_steps < 0:
            raise UserError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.ema < 1.0:
            raise UserError(f"--ema must be a decay in [0, 1) (0 = off), got {self.ema}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= self.peak_at < 1.0:
            raise UserError(f"--peak-at must be a fraction of the run in [0, 1), got {self.peak_at}")
        if not 0.0 <= self.momentum < 1.0:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise UserError("--nesterov needs a positive --momentum")
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")


@dataclass
class DataConfig:
    data_dir: str = "data"
    subset: int | None = None  # first N training images
    # Held out of training (class-stratified, from --seed; pipeline/val_split.py): the plateau
    # scheduler and best.pt are decided on it, so the test set decides nothing. 0 = decide on test;
    # None = 5,000, or a tenth of the training images when --subset leaves fewer than 50,000.
    val: int | None = None
    test_subset: int | None = None  # first N test images (a full test pass takes minutes on a CPU)
    workers: int | None = None  # FFCV numba threads; None = the cores this process may use
    # Data path: "ffcv" (numba threads on the host), "torch" (tensor ops on the training device,
    # needs no FFCV), "auto" (pipeline/loaders.py: FFCV where it imports and betons exist).
    loader: str = "auto"

    def validate(self) -> None:
        if self.val is not None and self.val < 0:
            raise UserError(f"--val must be >= 0, got {self.val}")
        if self.subset is not None and self.subset < 1:
            raise UserError(f"--subset must be at least 1, got {self.subset}")
        if self.test_subset is not None and self.test_subset < 1:
            raise UserError(f"--test-subset must be at least 1, got {self.test_subset}")
        if self.loader not in LOADERS:
            raise UserError(f"--loader must be one of {', '.join(LOADERS)}, got {self.loader!r}")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        for flag, value in (("val", self.val), ("subset", self.subset), ("test-subset", self.test_subset)):
            check_at_most(flag, value, MAX_COUNT, " images")
        check_at_most("workers", self.workers, MAX_WORKERS, " loader threads")


@dataclass
class RunConfig:
    run_dir: str = ""
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None  # None = the device's default: autocast on CUDA and on CPUs with native bf16
    channels_last: bool | None = None  # None = the device's default for the norm (training/device.py)
    compile: bool = False
    tensorboard: bool = True  # event files under RUN/tb/ (metrics.csv stays the source of truth)
    # When the test set is scored (training/epoch.py score_test): "epoch", or "needed" (when it
    # decides, at the final epoch and at new bests on validation). None = "epoch" on the CPU,
    # "needed" on CUDA.
    test_every: str | None = None
    # Each test pass also scores flip test-time augmentation (a second forward on the mirrored
    # images), reported beside the plain accuracy; the plain one stays the record's test_acc.
    tta: bool = False
    # With tta: also score the views shifted by this many pixels, each with its mirror (0 = flip
    # TTA only; models/tta.py).
    tta_shift: int = 0


def check_tta_shift(shift: int) -> None:
    """--tta-shift's bound, for train and evaluate alike."""
    if not 0 <= shift <= MAX_TTA_SHIFT:
        raise UserError(f"--tta-shift must be between 0 and {MAX_TTA_SHIFT} pixels, got {shift}")


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    recipe: str = "default"

    def validate(self) -> TrainConfig:
        for section in (self.data, self.augment, self.model, self.optim, self.run):
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                if isinstance(value, float) and not math.isfinite(value):
                    raise UserError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        self.data.validate()
        self.augment.validate()
        self.model.validate()
        self.optim.validate()
        if not 0 <= self.run.seed <= MAX_SEED:
            raise UserError(f"--seed must be between 0 and {MAX_SEED:,}, got {self.run.seed:,}")
        if self.run.test_every not in (None, *TEST_EVERY):
            raise UserError(f"--test-every must be one of {', '.join(TEST_EVERY)}, got {self.run.test_every!r}")
        check_tta_shift(self.run.tta_shift)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """The current format; a run's record passes through common/upgrade.py first (RunDir does)."""
        def build(kind: type, values: dict[str, Any] | None) -> Any:
            values = dict(values or {})
            names = {f.name for f in dataclasses.fields(kind)}
            kwargs = {k: v for k, v in values.items() if k in names}
            if kind is AugmentConfig and kwargs.get("fill") is not None:
                kwargs["fill"] = tuple(kwargs["fill"])
            return kind(**kwargs)

        return cls(
            data=build(DataConfig, raw.get("data")),
            augment=build(AugmentConfig, raw.get("augment")),
            model=build(ModelConfig, raw.get("model")),
            optim=build(OptimConfig, raw.get("optim")),
            run=build(RunConfig, raw.get("run")),
            recipe=raw.get("recipe", "default"),
        )


RECIPES = ("default", "assignment", "fast")

# (section, field) a resumed run may change: how it runs, not what it learns. The data folder may
# move (resume checks its sha256s against the run's record).
ENVIRONMENT = (("run", "device"), ("run", "compile"), ("run", "amp"), ("run", "channels_last"), ("run", "tensorboard"), ("run", "test_every"),
               ("run", "tta"), ("run", "tta_shift"),
               ("data", "workers"), ("data", "data_dir"), ("data", "loader"))


def apply_recipe(cfg: TrainConfig, recipe: str) -> TrainConfig:
    """Named presets. `assignment` is the original course assignment, exactly: its model
    (LayerNorm main path, BatchNorm projection shortcuts, no zero-init) and its albumentations
    augmentation (reflect-101 borders, no flip), SGD 0.03 / momentum 0.9 / no weight decay."""
    if recipe == "default":
        return cfg
    if recipe == "assignment":
        cfg.data.val = 0  # the original decided on the test set: plateau on test loss, best on test
        cfg.model.shortcut_norm = "batch"
        cfg.model.zero_init = False
        cfg.augment.border = "reflect"
        cfg.optim.weight_decay = 0.0
        cfg.augment.flip = False
        cfg.augment.crop = True
        cfg.augment.pad = 2
        cfg.augment.rotate = True
        cfg.augment.max_angle = 5.0
        cfg.augment.cutout = True
        cfg.augment.cutout_size = 16
        cfg.augment.cutout_p = 0.5
        cfg.recipe = recipe
        return cfg
    if recipe == "fast":
        return _fast(cfg)
    raise UserError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")


def _fast(cfg: TrainConfig) -> TrainConfig:
    """Time to accuracy on the default model (LayerNorm main path, BatchNorm shortcuts, zero-init)
    with weight-standardized convs (`--weight-std`: same parameters, +1.9 points after 15 epochs,
    measured; `--no-weight-std` trains the plain convs): a one-cycle per-step schedule, Nesterov
    SGD, decay on weights only, label smoothing, flip + pad-4 crop and no cutout, progressive
    resizing (of 15 epochs, 1-5 on images downscaled to 24 px, 6-7 at 28 px, full size from epoch
    8; `--min-res 0` turns it off), trained on all 50,000 images and reported at its last epoch
    (a fixed schedule decides nothing, so no validation split is held out). For the same reason
    the test set is scored only at the last epoch on every device (`--test-every needed`; on a CPU
    a test pass is a sixth of an epoch): `--test-every epoch` draws the per-epoch test curve. That
    pass also scores TTA with 1-pixel shifts (`--tta --tta-shift 1`, airbench's six views),
    reported beside the plain accuracy: TTA helped every model measured. `--cutout` turns on the 8-pixel cutout the recipe had before
    full-data runs showed it costs accuracy in 15 epochs. The ablation behind each value is in
    docs/BENCHMARKS.md ("Time to accuracy")."""
    cfg.model.weight_std = True
    cfg.optim.epochs = 15
    cfg.optim.batch_size = 256
    cfg.optim.schedule = "onecycle"
    cfg.optim.peak_at = 0.2
    cfg.optim.lr = 0.2
    cfg.optim.nesterov = True
    cfg.optim.weight_decay = 5e-4
    cfg.optim.decay_all = False
    cfg.optim.label_smoothing = 0.1
    cfg.data.val = 0
    cfg.augment.crop, cfg.augment.pad, cfg.augment.border = True, 4, "reflect"
    cfg.augment.flip = True
    cfg.augment.rotate = False
    cfg.augment.cutout, cfg.augment.cutout_size, cfg.augment.cutout_p = False, 8, 1.0
    cfg.augment.min_res, cfg.augment.res_ramp_start, cfg.augment.res_ramp_end = 24, 5 / 15, 9 / 15
    cfg.run.test_every = "needed"
    cfg.run.tta, cfg.run.tta_shift = True, 1
    cfg.recipe = "fast"
    return cfg
