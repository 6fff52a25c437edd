"""How faithful a CAM is: does removing what it points at hurt the class more than the rest?

ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
Methods") removes pixels by noisy linear imputation from their neighbours, which avoids the
out-of-distribution artefacts of blacking pixels out. We use the library's
`ROADMostRelevantFirst` for both orders: on the CAM it removes the most relevant pixels (MoRF), on
1 - CAM the least relevant ones (LeRF, exactly what the library's ROADLeastRelevantFirst does).
The score is ROADCombined's (LeRF - MoRF) / 2 on the class probability.

Cost: ROADCombined's default 9 percentiles x 2 orders (2 forwards per call, plus the imputation
per image) took a minute for 20 images per layer, far over budget (docs/BENCHMARKS.md, 'Moved from
code comments'); one removal fraction with all layers and both orders stacked into a single forward
costs one pass of 4 x 20 images.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METRIC_NAME = "ROAD combined"
BETTER = "higher"


@dataclass
class RoadScores:
    prob: np.ndarray  # (N,) probability of the explained class on the intact image
    prob_morf: np.ndarray  # (N,) after removing the most relevant pixels
    prob_lerf: np.ndarray  # (N,) after removing the least relevant pixels
    score: np.ndarray  # (N,) (prob_lerf - prob_morf) / 2, in [-0.5, 0.5]

    @property
    def mean(self) -> float:
        return float(self.score.mean()) if len(self.score) else float("nan")


def describe(percentile: int) -> dict[str, str]:
    removed = 100 - percentile
    return {
        "metric": f"{METRIC_NAME} (LeRF - MoRF) / 2 at {removed}% of pixels removed, on the softmax "
                  "probability of the explained class (pytorch_grad_cam.metrics.road, noisy linear "
                  "imputation)",
        "better": f"{BETTER} is better",
        "meaning": f"score = (p after removing the {removed}% least relevant pixels - p after "
                   f"removing the {removed}% most relevant pixels) / 2, in [-0.5, 0.5]. Positive: "
                   "the pixels the map highlights carry the class evidence; about 0: the map is no "
                   "better than an arbitrary one; negative: it points away from the evidence.",
    }


def road_scores(model, inputs, cams_per_layer: Sequence[np.ndarray], categories: Sequence[int],
                percentile: int = 50, seed: int = 0, logits: np.ndarray | None = None) -> list[RoadScores]:
    """ROAD scores for each (N, H, W) map set in `cams_per_layer`, from one stacked forward pass.

    `percentile` is the library's: pixels below that percentile of the map are kept, so 50
    removes half. The imputer adds torch noise, seeded here so scores are reproducible.
    `logits` of the intact inputs, when the caller already has them, save one forward.
    """
    import torch
    from pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    n = len(inputs)
    masks = []
    for cams in cams_per_layer:
        cams = np.asarray(cams, dtype=np.float32)
        masks += [cams, 1.0 - cams]  # MoRF on the map, LeRF on its complement
    stacked = inputs.repeat(len(masks), 1, 1, 1)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in categories] * len(masks)
    model.eval()
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # grad-cam 1.5.7's imputer hands torch tensors to np.argwhere (NumPy 2 deprecation).
        warnings.filterwarnings("ignore", message=r"__array_wrap__ must accept context",
                                category=DeprecationWarning)
        torch.manual_seed(seed)
        after = ROADMostRelevantFirst(percentile=percentile)(
            stacked, np.concatenate(masks), targets, model, return_diff=False)
    after = np.asarray(after, dtype=np.float32).reshape(len(masks), n)

    if logits is None:
        with torch.no_grad():
            logits = model(inputs).float().numpy()
    probs = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    prob = probs[np.arange(n), np.asarray(categories, dtype=np.int64)].astype(np.float32)
    return [RoadScores(prob, after[2 * i], after[2 * i + 1], (after[2 * i + 1] - after[2 * i]) / 2)
            for i in range(len(cams_per_layer))]
