"""The classifier with its input normalisation built in: uint8 RGB NCHW in, logits out.

What `export` serialises. A module of its own, importing torch at module level, because
TorchScript resolves the class's type annotations through the defining module's globals (a class
built inside a function that imports torch locally cannot be scripted). No `from __future__ import
annotations` here: TorchScript cannot evaluate the string form of the buffers' class annotations.
"""

import numpy as np
import torch
from torch import nn


class NormalizedModel(nn.Module):
    """(images.float() - mean) / std with the run's 0-255 mean/std, then the classifier.

    The same float32 arithmetic as analysis.loading.to_model_input, so the logits equal what
    `evaluate` computes up to the memory layout's rounding.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(np.asarray(mean, np.float32)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(np.asarray(std, np.float32)).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The input contract, checked in the graph: a float batch (0-1 or normalised) would otherwise
        # be scaled as 0-255 pixels and answered wrongly without a word. Both checks read static
        # properties, so the ONNX exporter resolves them at export time (its graph types the input
        # as uint8 [batch, 3, 32, 32] and onnxruntime refuses anything else itself).
        if images.dtype != torch.uint8:
            raise ValueError("expected uint8 RGB images 0-255, NCHW (N, 3, 32, 32); got another dtype "
                             "(convert floats to 0-255 uint8 first)")
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != 32 or images.shape[3] != 32:
            raise ValueError("expected uint8 RGB images NCHW (N, 3, 32, 32); got shape " + str(list(images.shape)))
        return self.model((images.float() - self.mean) / self.std)
