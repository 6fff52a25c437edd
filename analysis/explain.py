"""`explain`: show the run's misclassified test images and where the model looked.

Writes into <run>/analysis/ (names: analysis/outputs.py):
  misclassified.png                    the chosen mistakes, 'true → predicted (conf%)' and test index
  {slug}_layer{L}.png                  each image beside its CAM overlay (gradcam_layer3.png, ...)
  {slug}_layer{L}_scores.json          per-image and mean faithfulness (ROAD), with what it means
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from analysis.faithfulness import BETTER, METRIC_NAME, describe
from analysis.gradcam import SLOW_METHODS, check_layers, check_method
from analysis.loading import load_model, load_test_set, open_run, to_model_input
from analysis.outputs import AnalysisFiles
from analysis.predictions import get_predictions
from analysis.selection import confidence, select_misclassified
from common.atomic import write_json
from common.config import MAX_SEED
from common.errors import UserError

TARGETS = ("predicted", "true")
ROAD_PERCENTILE = 50  # remove half the pixels; see analysis/faithfulness.py for the cost

Log = Callable[[str], None]


@dataclass
class LayerResult:
    layer: int
    figure: Path
    scores_json: Path
    resolution: tuple[int, int]
    scores: list[float]
    mean_score: float
    empty: list[bool]  # all-zero map: no positive evidence for the class at this layer


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


def explain(run_dir: str | Path | None = None, layers: Sequence[int] = (3,), count: int = 20,
            pick: str = "confident", seed: int = 0, target: str = "predicted",
            method: str = "gradcam", which: str = "best", data_dir: str | Path | None = None,
            runs_root: str | Path = "runs", log: Log = lambda m: None) -> ExplainResult:
    """Gallery of mistakes, a CAM figure and faithfulness scores per layer; see module docstring."""
    # Validate every flag before any slow work, so a typo costs nothing.
    layers = check_layers(layers)
    check_method(method)
    if target not in TARGETS:
        raise UserError(f"unknown --target {target!r}; choose 'predicted' or 'true'")
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED:,}, got {seed:,}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    inputs = open_run(run_dir, which, data_dir, runs_root)
    model = load_model(inputs)
    images, labels = load_test_set(inputs)
    pred, source = get_predictions(inputs, model, images, labels, log=log)
    indices = select_misclassified(pred, count, pick, seed)
    conf_all = confidence(pred)
    sel_labels, sel_preds = pred.labels[indices], pred.preds[indices]
    sel_conf = conf_all[indices]
    sel_images = images[indices]
    explained = sel_preds if target == "predicted" else sel_labels
    classes = inputs.classes
    timings["load"] = time.perf_counter() - t0

    from analysis.gallery import plot_cam_overlays, plot_misclassified

    files = AnalysisFiles.of(inputs.run)
    t = time.perf_counter()
    order = "most confident" if pick == "confident" else f"random, seed {seed}"
    gallery = plot_misclassified(
        sel_images, indices.tolist(), sel_labels.tolist(), sel_preds.tolist(), sel_conf.tolist(), classes,
        files.gallery,
        title=f"{len(indices)} of {len(pred.misclassified):,} misclassified test images ({order}) · "
              f"run {inputs.name}, {inputs.which}.pt")
    timings["gallery"] = time.perf_counter() - t

    t = time.perf_counter()
    import pytorch_grad_cam  # noqa: F401  (seconds cold: torchvision, cv2, scipy; timed apart)

    from analysis.faithfulness import road_scores
    from analysis.gradcam import compute_cams, target_block
    timings["import_grad_cam"] = time.perf_counter() - t

    if method in SLOW_METHODS:
        log(f"{method} runs one forward pass per channel and image: expect minutes on a CPU")
    t = time.perf_counter()
    x = to_model_input(sel_images, inputs.mean, inputs.std)
    batch = compute_cams(model, [target_block(model, layer) for layer in layers], x, explained, method)
    timings["cams"] = time.perf_counter() - t

    t = time.perf_counter()
    road = road_scores(model, x, [batch.cams[:, i] for i in range(len(layers))], explained,
                       percentile=ROAD_PERCENTILE, seed=seed, logits=batch.logits)
    timings["faithfulness"] = time.perf_counter() - t

    t = time.perf_counter()
    meta = describe(ROAD_PERCENTILE)
    results = []
    for i, layer in enumerate(layers):
        scores = road[i]
        res = batch.resolutions[i]
        fig_path = plot_cam_overlays(
            sel_images, batch.cams[:, i], indices.tolist(), sel_labels.tolist(), sel_preds.tolist(),
            sel_conf.tolist(), explained.tolist(), scores.score.tolist(), classes, files.cam_figure(method, layer),
            score_name="ROAD",
            title=f"{method} at layer{layer}[-1] ({res[0]}×{res[1]} map), for the {target} class · "
                  f"mean ROAD {scores.mean:+.3f} ({BETTER} is better) · run {inputs.name}, {inputs.which}.pt")
        empty = [not m.max() > 0 for m in batch.cams[:, i]]
        json_path = files.cam_scores(method, layer)
        write_json(json_path, {
            "run": str(inputs.run.path), "checkpoint": f"{inputs.which}.pt", "method": method,
            "target_layer": f"layer{layer}[-1]", "cam_resolution": list(res), "explained_class": target,
            **meta, "road_percentile": ROAD_PERCENTILE, "mean": round(scores.mean, 6),
            "empty_maps": int(sum(empty)),
            "images": [{
                "index": int(indices[k]), "true": classes[sel_labels[k]],
                "predicted": classes[sel_preds[k]], "explained": classes[explained[k]],
                "confidence": round(float(sel_conf[k]), 6),
                "prob": round(float(scores.prob[k]), 6),
                "prob_most_relevant_removed": round(float(scores.prob_morf[k]), 6),
                "prob_least_relevant_removed": round(float(scores.prob_lerf[k]), 6),
                "score": round(float(scores.score[k]), 6) + 0.0,  # + 0.0: no "-0.0" in the JSON
                "empty_map": empty[k],
            } for k in range(len(indices))],
        })
        results.append(LayerResult(layer, fig_path, json_path, res, [float(s) for s in scores.score],
                                   scores.mean, empty))
    timings["figures"] = time.perf_counter() - t
    if (inputs.run.path / "tb").is_dir():  # the run logs to TensorBoard: show the figures there too
        from analysis.tensorboard_images import add_figures

        summary = inputs.run.read_summary()
        step = (summary.best_epoch if inputs.which == "best" else summary.epochs_done) or 0
        add_figures(inputs.run.path, [gallery, *(r.figure for r in results)], step=step)
    timings["total"] = time.perf_counter() - t0

    return ExplainResult(
        run=inputs.run.path, which=inputs.which, method=method, target=target,
        indices=[int(i) for i in indices], labels=[int(v) for v in sel_labels],
        preds=[int(v) for v in sel_preds], confidences=[float(c) for c in sel_conf],
        classes=classes, gallery=gallery, layers=results, predictions_source=source,
        misclassified_total=int(len(pred.misclassified)), timings=timings)


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
