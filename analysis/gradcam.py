"""Class activation maps with pytorch_grad_cam, for one or several layers from a single pass.

The library averages the maps of all target layers it is given; we want one map per layer, so
`compute_cams` subclasses the chosen method to keep the layers apart. Layers 3 and 4 then cost
one forward + backward instead of two, about half the time of two calls (docs/BENCHMARKS.md,
'Moved from code comments').
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import UserError

# CLI name -> pytorch_grad_cam class. ScoreCAM runs one forward per channel per image (512 per
# image at layer4), minutes on a CPU; the others cost one forward (+ backward) in total.
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
}
SLOW_METHODS = ("scorecam",)
LAYERS = (1, 2, 3, 4)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def method_slug(method: str) -> str:
    """File-name form of a method name (gradcam++ -> gradcampp)."""
    return check_method(method).replace("+", "p")


def check_layers(layers: Sequence[int]) -> list[int]:
    """Distinct stage numbers in the order given; stages are the model's layer1..layer4."""
    out: list[int] = []
    for layer in layers:
        if layer not in LAYERS:
            raise UserError(f"--layer must be one of {', '.join(map(str, LAYERS))} (the ResNet stage "
                            f"whose last block is explained; 3 or 4 are the usual choices), got {layer}")
        if layer not in out:
            out.append(int(layer))
    if not out:
        raise UserError("give at least one --layer (3 or 4)")
    return out


def target_block(model, layer: int):
    """The last block of stage `layer` (model.layerN[-1]): the deepest map at that resolution."""
    stage = getattr(model, f"layer{layer}", None)
    if stage is None:
        raise UserError(f"the model has no layer{layer}; only ResNet-style models can be explained")
    return stage[-1]


@dataclass
class CamBatch:
    cams: np.ndarray  # (N, layers, H, W) float32, each map min-max scaled to [0, 1], input size
    logits: np.ndarray  # (N, classes) of the same forward pass
    resolutions: list[tuple[int, int]]  # native (h, w) of each layer's map before upsampling


def _per_layer(cls: type) -> type:
    def aggregate_multi_layers(self, cam_per_target_layer):
        # Base class averages the layers; keep them apart: list of (N, 1, H, W) -> (N, L, H, W).
        return np.concatenate(cam_per_target_layer, axis=1)

    return type(f"{cls.__name__}PerLayer", (cls,), {"aggregate_multi_layers": aggregate_multi_layers})


def compute_cams(model, target_layers: Sequence, inputs, categories: Sequence[int],
                 method: str = "gradcam") -> CamBatch:
    """CAMs of `categories[i]` for `inputs[i]` at each target layer (modules of `model`).

    This is the one code path both `explain` and the faithfulness test use, so the test checks
    exactly what users see. Targets are raw logits (ClassifierOutputTarget), as in the Grad-CAM
    paper: softmax targets would mix in the other classes' evidence.
    """
    import pytorch_grad_cam
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = _per_layer(getattr(pytorch_grad_cam, METHODS[check_method(method)]))
    if len(categories) != len(inputs):
        raise ValueError(f"{len(categories)} categories for {len(inputs)} inputs")
    targets = [ClassifierOutputTarget(int(c)) for c in categories]
    cam = cls(model=model, target_layers=list(target_layers))
    if method == "scorecam":
        cam.batch_size = 64  # library default 16; larger batches are faster on a CPU
    try:
        with torch.enable_grad():
            maps = cam(input_tensor=inputs, targets=targets)
        resolutions = [tuple(a.shape[-2:]) for a in cam.activations_and_grads.activations[:len(target_layers)]]
        logits = cam.outputs.detach().float().cpu().numpy()
    finally:
        cam.activations_and_grads.release()  # remove hooks; the model is used again afterwards
    return CamBatch(np.asarray(maps, dtype=np.float32), logits, resolutions)
