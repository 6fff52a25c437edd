"""`explain`: show the run's misclassified test images and where the model looked.

Writes into <run>/analysis/ (names: analysis/outputs.py):
  misclassified.png                    the chosen mistakes, 'true → predicted (conf%)' and test index
  {slug}_layer{L}.png                  each image beside its CAM overlay (gradcam_layer3.png, ...)
  {slug}_layer{L}_scores.json          per-image and mean faithfulness (ROAD), with what it means
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.gradcam import SLOW_METHODS, check_layers, check_method
from analysis.inspection.faithfulness import BETTER, METRIC_NAME, describe
from analysis.inspection.selection import confidence, select_misclassified
from analysis.inspection.test_predictions import get_predictions
from analysis.loading import RunInputs, load_model, load_test_set, open_run, to_model_input
from analysis.outputs import AnalysisFiles
from common.atomic import write_json
from common.config import MAX_SEED
from common.errors import UserError
from common.timing import Timings

if TYPE_CHECKING:
    import numpy as np

    from analysis.inspection.faithfulness import RoadScores

TARGETS = ("predicted", "true")
ROAD_PERCENTILE = 50  # remove half the pixels; see analysis/inspection/faithfulness.py for the cost

Log = Callable[[str], None]


@dataclass
class Selection:
    """The misclassified test images shown, in gallery order, with what is known about each."""

    indices: np.ndarray  # test indices
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # true classes
    preds: np.ndarray  # predicted classes
    confidences: np.ndarray  # probability of the predicted class
    explained: np.ndarray  # the class each map explains: preds or labels, per --target

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class LayerResult:
    layer: int
    figure: Path
    scores_json: Path
    resolution: tuple[int, int]
    scores: list[float]
    mean_score: float
    empty: list[bool]  # all-zero map: no positive evidence for the class at this layer
    maps: np.ndarray | None = field(default=None, repr=False)  # (N, 32, 32) the CAMs drawn
    seconds: float = 0.0  # drawing the figure and writing the scores


@dataclass
class ExplainResult:
    run: Path
    which: str
    method: str
    target: str
    indices: list[int]  # test indices shown, in gallery order
    labels: list[int]
    preds: list[int]
    confidences: list[float]
    classes: list[str]
    gallery: Path
    layers: list[LayerResult]
    predictions_source: str
    misclassified_total: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        return [self.gallery] + [p for r in self.layers for p in (r.figure, r.scores_json)]


def _check_flags(layers: Sequence[int], count: int, seed: int, target: str, method: str) -> list[int]:
    """Every flag, before any slow work, so a typo costs nothing; returns the checked layers."""
    checked = check_layers(layers)
    check_method(method)
    if target not in TARGETS:
        raise UserError(f"unknown --target {target!r}; choose 'predicted' or 'true'")
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED:,}, got {seed:,}")
    return checked


def explain(run_dir: str | Path | None = None, layers: Sequence[int] = (3,), count: int = 20,
            pick: str = "confident", seed: int = 0, target: str = "predicted",
            method: str = "gradcam", which: str = "best", data_dir: str | Path | None = None,
            runs_root: str | Path = "runs", log: Log = lambda m: None) -> ExplainResult:
    """Gallery of mistakes, a CAM figure and faithfulness scores per layer; see module docstring."""
    layers = _check_flags(layers, count, seed, target, method)
    timings = Timings()
    with timings.phase("load"):
        inputs = open_run(run_dir, which, data_dir, runs_root)
        model = load_model(inputs)
        images, labels = load_test_set(inputs)
        pred, source = get_predictions(inputs, model, images, labels, log=log)
        indices = select_misclassified(pred, count, pick, seed)
        sel_labels, sel_preds = pred.labels[indices], pred.preds[indices]
        sel = Selection(indices, images[indices], sel_labels, sel_preds, confidence(pred)[indices],
                        sel_preds if target == "predicted" else sel_labels)

    from analysis.gallery import plot_misclassified

    files = AnalysisFiles.of(inputs.run)
    with timings.phase("gallery"):
        order = "most confident" if pick == "confident" else f"random, seed {seed}"
        gallery = plot_misclassified(
            sel.images, sel.indices.tolist(), sel.labels.tolist(), sel.preds.tolist(), sel.confidences.tolist(),
            inputs.classes, files.gallery,
            title=f"{len(sel)} of {len(pred.misclassified):,} misclassified test images ({order}) · "
                  f"run {inputs.name}, {inputs.which}.pt")

    with timings.phase("import_grad_cam"):
        import pytorch_grad_cam  # noqa: F401  (seconds cold: torchvision, cv2, scipy; timed apart)

        from analysis.gradcam import compute_cams, target_block
        from analysis.inspection.faithfulness import road_scores

    if method in SLOW_METHODS:
        log(f"{method} runs one forward pass per channel and image: expect minutes on a CPU")
    with timings.phase("cams"):
        x = to_model_input(sel.images, inputs.mean, inputs.std)
        batch = compute_cams(model, [target_block(model, layer) for layer in layers], x, sel.explained.tolist(), method)
    with timings.phase("faithfulness"):
        road = road_scores(model, x, [batch.cams[:, i] for i in range(len(layers))], sel.explained.tolist(),
                           percentile=ROAD_PERCENTILE, seed=seed, logits=batch.logits)

    results = []
    for i, layer in enumerate(layers):
        with timings.phase("figures") as lap:
            result = explain_layer(sel, layer, batch.cams[:, i], batch.resolutions[i], road[i], inputs, files,
                                   method, target)
        result.seconds = lap.seconds
        results.append(result)
    if (inputs.run.path / "tb").is_dir():  # the run logs to TensorBoard: show the figures there too
        from analysis.inspection.tensorboard_images import add_figures

        summary = inputs.run.read_summary()
        step = (summary.best_epoch if inputs.which == "best" else summary.epochs_done) or 0
        add_figures(inputs.run.path, [gallery, *(r.figure for r in results)], step=step)
    timings.stop()

    return ExplainResult(
        run=inputs.run.path, which=inputs.which, method=method, target=target,
        indices=[int(i) for i in sel.indices], labels=[int(v) for v in sel.labels],
        preds=[int(v) for v in sel.preds], confidences=[float(c) for c in sel.confidences],
        classes=inputs.classes, gallery=gallery, layers=results, predictions_source=source,
        misclassified_total=int(len(pred.misclassified)), timings=timings)


def explain_layer(sel: Selection, layer: int, maps: np.ndarray, resolution: tuple[int, int], scores: RoadScores,
                  inputs: RunInputs, files: AnalysisFiles, method: str, target: str) -> LayerResult:
    """One layer's CAM figure and its ROAD scores JSON, from the maps and scores already computed."""
    from analysis.gallery import plot_cam_overlays

    classes = inputs.classes
    fig_path = plot_cam_overlays(
        sel.images, maps, sel.indices.tolist(), sel.labels.tolist(), sel.preds.tolist(),
        sel.confidences.tolist(), sel.explained.tolist(), scores.score.tolist(), classes,
        files.cam_figure(method, layer), score_name="ROAD",
        title=f"{method} at layer{layer}[-1] ({resolution[0]}×{resolution[1]} map), for the {target} class · "
              f"mean ROAD {scores.mean:+.3f} ({BETTER} is better) · run {inputs.name}, {inputs.which}.pt")
    empty = [not m.max() > 0 for m in maps]
    json_path = files.cam_scores(method, layer)
    write_json(json_path, {
        "run": str(inputs.run.path), "checkpoint": f"{inputs.which}.pt", "method": method,
        "target_layer": f"layer{layer}[-1]", "cam_resolution": list(resolution), "explained_class": target,
        **describe(ROAD_PERCENTILE), "road_percentile": ROAD_PERCENTILE, "mean": round(scores.mean, 6),
        "empty_maps": int(sum(empty)),
        "images": [{
            "index": int(sel.indices[k]), "true": classes[sel.labels[k]],
            "predicted": classes[sel.preds[k]], "explained": classes[sel.explained[k]],
            "confidence": round(float(sel.confidences[k]), 6),
            "prob": round(float(scores.prob[k]), 6),
            "prob_most_relevant_removed": round(float(scores.prob_morf[k]), 6),
            "prob_least_relevant_removed": round(float(scores.prob_lerf[k]), 6),
            "score": round(float(scores.score[k]), 6) + 0.0,  # + 0.0: no "-0.0" in the JSON
            "empty_map": empty[k],
        } for k in range(len(sel))],
    })
    return LayerResult(layer, fig_path, json_path, resolution, [float(s) for s in scores.score], scores.mean,
                       empty, maps=maps)


def format_scores(result: ExplainResult) -> str:
    """Per-image table of faithfulness scores, one column per layer, then the means."""
    names = [f"layer{r.layer}" for r in result.layers]
    head = f"{'test #':>7}  {'true':<11} {'predicted':<11} {'conf':>5}  " + "  ".join(f"{n:>7}" for n in names)
    lines = [f"{METRIC_NAME} faithfulness of {result.method} ({BETTER} is better, range -0.5..0.5):", head]
    for k, idx in enumerate(result.indices):
        cells = "  ".join(f"{r.scores[k] + 0.0:>+7.3f}" for r in result.layers)
        lines.append(f"{idx:>7}  {result.classes[result.labels[k]]:<11} "
                     f"{result.classes[result.preds[k]]:<11} {100 * result.confidences[k]:>4.0f}%  {cells}")
    lines.append(f"{'mean':>7}  {'':<11} {'':<11} {'':>5}  " + "  ".join(f"{r.mean_score + 0.0:>+7.3f}" for r in result.layers))
    for r in result.layers:
        if any(r.empty):
            lines.append(f"layer{r.layer}: {sum(r.empty)} of {len(r.empty)} maps are empty ({result.method} found "
                         "no positive evidence for the class there; such maps score about 0)")
    return "\n".join(lines)
