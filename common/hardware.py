"""What this machine's CPU can do, where training and analysis must agree on it.

Training (training/device.py) turns bf16 autocast on by default where the CPU has native bf16;
analysis reruns a run's TTA views in that same precision (analysis/inspection/test_predictions.py)
and may not import training, so the rule itself (`cpu_bf16`) lives here and both call it. torch is
imported inside the function: `common` stays light.
"""

from __future__ import annotations


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls/convs in hardware (oneDNN uses them under autocast).
    Measured on a 2-core AMD EPYC (Zen 5, avx512_bf16): ResNet-18-LN train step 118 img/s fp32,
    214 img/s bf16 autocast (1.8×)."""
    import torch

    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if check is not None and check():
        return True
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx is not None and amx())


def cpu_bf16(amp: bool | None) -> bool:
    """Whether a run on this CPU computes under bf16 autocast, from its --amp/--no-amp (None: not
    given): yes where the CPU has native bf16, unless --no-amp. `--amp` without native bf16 is
    ignored, because emulated bf16 is slower than fp32 (training/device.py says so in its note)."""
    return amp is not False and cpu_has_native_bf16()
