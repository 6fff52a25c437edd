"""Device, precision and memory-format choices, made once per run.

Memory format (`--channels-last/--no-channels-last`; default: `default_channels_last`):
- CPU: channels-last for every norm. On the 2-core dev box (ResNet-18 LN, batch 128, fp32,
  `cli.py bench train --steps 12`) a train step ran at 51.6 img/s channels-last vs 44.2 img/s NCHW
  (+17%; a second run: 50.4 vs 41.5).
- CUDA: per norm of the main path, until `bench gpu` measures otherwise. Batch norm: channels-last
  (cuDNN's convolutions and batch norm both have NHWC kernels). Layer and group norm: NCHW,
  because PyTorch's CUDA group norm has no channels-last kernel: it copies its input to NCHW and
  its output back, autocast runs it in fp32, and the next convolution converts again, for each of
  the model's norms.

Precision (`--amp/--no-amp`; default: on where it is native — CUDA, and CPUs with native bf16):
- CUDA: bf16 autocast where the GPU has *native* bf16 (Ampere and newer); fp16 + GradScaler on
  older GPUs (T4, V100). `torch.cuda.is_bf16_supported()` counts emulation by default, which would
  hand those GPUs slow emulated bf16, so emulation is excluded.
- CPU: bf16 autocast where the CPU has native bf16 (AVX512-BF16 or AMX), the default there: on
  the 2-core Zen 5 box a train step is 1.99× faster (206 vs 104 img/s) and a 2-epoch run (10,000
  images, seed 0) learned the same (epoch 2 train loss 2.0090 vs 2.0085 fp32, test accuracy 28.7%
  vs 29.1%; docs/BENCHMARKS.md). Elsewhere fp32: emulated bf16 on a CPU is slower than fp32, and an
  explicit --amp there says so. On the CPU the test pass's plain forward stays fp32; TTA's extra
  views run in this precision (training/epoch.py).

Every CUDA-only decision reads `torch.cuda` through this module, so tests reach them on a CPU
machine by patching `torch.cuda` functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from common.errors import UserError
from common.hardware import cpu_bf16

# The PyPI torch wheels of requirements.lock are CUDA 13 builds; they need an NVIDIA driver >= 580.
MIN_DRIVER = "580"


@dataclass
class DeviceSetup:
    device: torch.device
    amp_dtype: torch.dtype | None  # None = full fp32
    channels_last: bool
    use_scaler: bool  # fp16 needs loss scaling, bf16 does not
    note: str = ""  # why the precision is what it is, when that is not what was asked for

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """A loader batch in the memory format the model runs in (a no-op when it already is)."""
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x if x.is_contiguous() else x.contiguous()

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def describe(self) -> str:
        amp = "fp32" if self.amp_dtype is None else f"{self.precision} AMP"
        fmt = "channels-last" if self.channels_last else "NCHW"
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"{name}, {amp}, {fmt}"


def nvidia_device_present() -> bool:
    """An NVIDIA GPU the kernel knows about, whether or not this torch can use it."""
    return os.path.exists("/dev/nvidia0")


def _cuda_dtype() -> tuple[torch.dtype, str]:
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16, ""
    return torch.float16, "no native bf16 on this GPU: fp16 with loss scaling"


def auto_device() -> str:
    """What `--device auto` means here: "cuda" when CUDA is usable, else "cpu" — unless a GPU is
    there that this torch cannot use. Training on the CPU instead would take ~100× longer without
    anyone noticing, so that is one sentence and a stop. torchrun's ranks ask this too
    (training/distributed.py `device_for`), so a broken driver stops every rank the same way."""
    if torch.cuda.is_available():
        return "cuda"
    if nvidia_device_present():
        raise UserError(f"an NVIDIA GPU is present (/dev/nvidia0) but CUDA is unusable from this torch "
                        f"{torch.__version__} (the CUDA 13 wheels need driver >= {MIN_DRIVER}); update the "
                        "driver, or pass --device cpu to train on the CPU")
    return "cpu"


def default_channels_last(device: torch.device, norm: str | None) -> bool:
    """The memory format when `--channels-last` is not given (the module docstring says why):
    channels-last on the CPU; on CUDA channels-last for batch norm only, NCHW for layer and group
    norm. `norm` is the model's main-path norm; None (a caller without a model, e.g. a benchmark
    that sets the format itself) keeps channels-last."""
    if device.type != "cuda" or norm is None:
        return True
    return norm == "batch"


def resolve_device(name: str, amp: bool | None = None, channels_last: bool | None = None,
                   norm: str | None = None) -> DeviceSetup:
    """`name`: auto, cpu, cuda or cuda:N. `amp`: None = the device's default (CUDA on, CPU off).
    `channels_last`: None = `default_channels_last` for the device and `norm` (the model's main-path
    norm)."""
    if name == "auto":
        name = auto_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name} is not supported; use auto, cpu or cuda[:N]")
    layout = default_channels_last(device, norm) if channels_last is None else channels_last
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but no usable CUDA GPU is visible; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: only {count} GPU(s) visible (cuda:0-cuda:{count - 1})")
        # FFCV's streams and events, and every tensor created without an explicit device, go to
        # the *current* device: without this, --device cuda:1 would still use GPU 0 for them.
        torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
        device = torch.device("cuda", torch.cuda.current_device())
        # Shapes are fixed (batch, 32×32), so cuDNN's per-shape autotuning pays off from step 2.
        torch.backends.cudnn.benchmark = True
        if amp is False:
            return DeviceSetup(device, None, layout, use_scaler=False)
        dtype, note = _cuda_dtype()
        return DeviceSetup(device, dtype, layout, use_scaler=dtype is torch.float16, note=note)
    if cpu_bf16(amp):
        return DeviceSetup(device, torch.bfloat16, layout, use_scaler=False,
                           note="" if amp else "bf16 autocast by default on this CPU (native bf16; --no-amp for fp32)")
    ignored = ("--amp ignored: this CPU has no native bf16 (AVX512-BF16 or AMX), and emulated bf16 is "
               "slower than fp32") if amp else ""
    return DeviceSetup(device, None, layout, use_scaler=False, note=ignored)
