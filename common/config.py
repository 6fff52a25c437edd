"""Plain dataclass configs with their defaults in one place.

The CLI fills them from flags, `config.json` in a run directory is their serialisation, and a run
is rebuilt from that file with `TrainConfig.from_dict`. Nothing here imports torch or FFCV, so
reading a config is instant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.errors import UserError

NORMS = ("layer", "group", "batch")


@dataclass
class AugmentConfig:
    """Train-time augmentation; every op can be switched off or resized."""

    crop: bool = True
    pad: int = 4
    flip: bool = True
    flip_p: float = 0.5
    rotate: bool = True
    max_angle: float = 5.0
    cutout: bool = True
    cutout_size: int = 16
    cutout_p: float = 0.5
    # RGB value (0-255) used for padding, rotation corners and cutout. None = the train set's
    # mean pixel, which normalises to zero and so carries no signal.
    fill: tuple[int, int, int] | None = None

    def validate(self) -> None:
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

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.norm == "group":
            for width in (64, 128, 256, 512):
                if self.groups < 1 or width % self.groups:
                    raise UserError(f"--groups must divide 64, 128, 256 and 512 (e.g. 8, 16, 32), "
                                    f"got {self.groups}")


@dataclass
class OptimConfig:
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    plateau_threshold: float = 0.001
    max_steps: int | None = None  # per epoch; for quick looks on a CPU

    def validate(self) -> None:
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
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


@dataclass
class DataConfig:
    data_dir: str = "data"
    subset: int | None = None  # first N training images
    test_subset: int | None = None  # first N test images (a full test pass costs ~4 min on 2 CPU cores)
    workers: int | None = None  # FFCV numba threads; None = all cores

    def validate(self) -> None:
        if self.subset is not None and self.subset < 1:
            raise UserError(f"--subset must be at least 1, got {self.subset}")
        if self.test_subset is not None and self.test_subset < 1:
            raise UserError(f"--test-subset must be at least 1, got {self.test_subset}")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")


@dataclass
class RunConfig:
    run_dir: str = ""
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # CUDA only
    channels_last: bool | None = None  # None = best measured default for the device
    compile: bool = False


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    recipe: str = "default"

    def validate(self) -> TrainConfig:
        self.data.validate()
        self.augment.validate()
        self.model.validate()
        self.optim.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
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


def apply_recipe(cfg: TrainConfig, recipe: str) -> TrainConfig:
    """Named presets. `assignment` is the original course assignment, exactly."""
    if recipe == "default":
        return cfg
    if recipe == "assignment":
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
    raise UserError(f"unknown recipe {recipe!r}; choose 'default' or 'assignment'")
