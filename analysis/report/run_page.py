"""A run's report page: header facts and six sections, built only from files that already exist.

Sections: the run configuration, the data it was trained on, training curves and the metrics
table, per-class accuracy with the confusion matrix, the misclassified gallery with Grad-CAM at
layers 3 and 4 and their faithfulness scores, and throughput per epoch (plus <run>/bench.json).
Missing analysis outputs are made beforehand (analysis/report/ensure.py); what is still missing is shown
as a note and listed in the document's notes. Markup comes only from analysis/report/html.py.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.figures import curves_figure, figure_png, throughput_figure
from analysis.outputs import BENCH_FILE, AnalysisFiles, bench_path, read_json
from analysis.report.ensure import CAM_LAYERS, CAM_METHOD
from analysis.report.html import (
    Document,
    Raw,
    Section,
    bar,
    code,
    div,
    figure,
    heading,
    join,
    key_values,
    muted,
    note,
    paragraph,
    signed,
    status_badge,
    table,
)
from common.config import TrainConfig
from common.errors import UserError
from common.format import duration, flatten, percent, value_text
from common.records import DataRecord, RunSummary
from common.rundir import RunDir
from models.tta import tta_name


@dataclass
class RunRecords:
    """What training wrote that the page reads: config.json, metrics.csv, summary.json."""

    config: dict[str, Any]
    train: TrainConfig
    rows: list[dict[str, float]]
    summary: RunSummary


def read_run(run: RunDir) -> RunRecords:
    """The run's records; UserError when the run cannot be reported (damaged or no finished epoch)."""
    config = run.read_config()
    try:
        rows = run.read_metrics()
    except (ValueError, TypeError, KeyError):
        raise UserError(f"{run.metrics_path} is damaged (not the CSV `train` writes); the run cannot "
                        "be reported") from None
    if not rows or not run.has_checkpoint("last"):
        raise UserError(f"{run.path} has not finished an epoch yet; train at least one epoch before "
                        "making a report")
    return RunRecords(config, run.train_config(), rows, run.read_summary())


def run_document(run: RunDir, records: RunRecords, failures: dict[str, str]) -> Document:
    """The page for a run; `failures` are the ensure step's (section id → why it could not run)."""
    config, rows, summary = records.config, records.rows, records.summary
    notes: list[str] = []
    decided_on = summary.decided_on or "test"  # runs from before the validation split decided on test
    best = max(rows, key=lambda r: r["test_acc"])
    best_epoch = summary.best_epoch if summary.best_epoch is not None else best["epoch"]
    at_best = next((r for r in rows if r["epoch"] == best_epoch), best)
    epochs_total = summary.epochs or records.train.optim.epochs
    wall = summary.wall_seconds if summary.wall_seconds is not None else sum(r["seconds"] for r in rows)
    tta = rows[-1].get("test_acc_tta", math.nan)  # --tta runs: TTA at the final test pass
    facts: list[tuple[Any, Any]] = [
        ("status", status_badge(summary.status.value)),
        ("best epoch", f"{best_epoch}, chosen on {decided_on}"
                       + (f" (validation accuracy {percent(summary.best_acc)})" if decided_on == "validation" else "")),
        ("test accuracy at the best epoch", percent(at_best["test_acc"])),
        ("final test accuracy", percent(rows[-1]["test_acc"])
         + (f" ({percent(tta)} with {tta_name(records.train.run.tta_shift)})" if math.isfinite(tta) else "")),
        ("epochs", f"{rows[-1]['epoch']} / {epochs_total}" if epochs_total else str(rows[-1]["epoch"])),
        ("wall time", duration(wall)),
        ("model", f"ResNet-18 · {records.train.model.norm} norm"),
    ]
    subtitle = " · ".join(str(x) for x in (run.path.resolve(), config.get("device"), config.get("created")) if x)
    sections = [
        Section("config", "Run configuration", _config_body(config)),
        Section("data", "Data", _data_body(config, notes)),
        Section("metrics", "Training curves and metrics", _metrics_body(run, rows, int(best_epoch), decided_on, notes)),
        Section("evaluation", "Per-class accuracy and confusion matrix",
                _evaluation_body(run, failures.get("evaluation"), notes)),
        Section("explain", "Misclassified images and Grad-CAM", _explain_body(run, failures.get("explain"), notes)),
        Section("benchmark", "Throughput and benchmarks", _benchmark_body(run, config, rows, notes)),
    ]
    return Document(f"Run {run.path.name} · CIFAR-10 report", f"Run {run.path.name}", subtitle, facts,
                    sections, notes)


def _config_body(config: dict[str, Any]) -> Raw:
    train = config.get("train") or {}
    groups: list[tuple[str, list[tuple[str, Any]]]] = []
    other: list[tuple[str, Any]] = []
    for key, value in train.items():
        if isinstance(value, dict):
            groups.append((key, [(k, value_text(v)) for k, v in flatten(value)]))
        else:
            other.append((key, value_text(value)))
    if other:
        groups.append(("other", other))
    env: list[tuple[str, Any]] = [("device", config.get("device", "—")), ("created", config.get("created", "—"))]
    command = config.get("command")
    if isinstance(command, list):
        env.append(("command", code("python " + " ".join(shlex.quote(str(c)) for c in command))))
    versions = config.get("versions") or {}
    env += [(name, version) for name, version in versions.items()]
    return join([muted("The ", code("train"), " record of ", code("config.json"),
                       ": every setting as training resolved it."),
                 div(*(key_values(pairs, caption=name) for name, pairs in groups), cls="grid"),
                 key_values(env, caption="device and package versions")])


def _data_body(config: dict[str, Any], notes: list[str]) -> Raw:
    try:
        data = DataRecord.from_dict(config["data"])
    except (KeyError, TypeError):
        msg = "config.json has no complete data record; the run was not written by this toolkit's `train`"
        notes.append(msg)
        return note(msg)
    official_text = ("yes (md5 of the official archive)" if data.official is True else
                     "no: a valid CIFAR-10 layout, but not the official release (md5 differs)"
                     if data.official is False else "—")
    classes = data.classes
    pairs: list[tuple[str, Any]] = [
        ("data folder", code(data.data_dir)),
        ("source", code(data.source)),
        ("official release", official_text),
        ("classes", f"{len(classes)}: {', '.join(map(str, classes))}" if classes else "—"),
    ]
    pairs += [(f"sha256 of {split}.beton", code(digest)) for split, digest in data.sha256.items()]
    for name, values in (("train mean (R, G, B)", data.train_mean), ("train std (R, G, B)", data.train_std)):
        pairs.append((name, ", ".join(f"{v:.2f}" for v in values) if isinstance(values, list) else "—"))
    parts = [muted("What ", code("config.json"), " recorded about the data this run was trained on "
                   "(0-255 pixel scale)."), key_values(pairs)]
    parts += _manifest_parts(data, notes)
    return join(parts)


def _manifest_parts(data: DataRecord, notes: list[str]) -> list[Raw]:
    """Counts per split and class from the data folder's manifest.json, if it is still there."""
    manifest_path = Path(data.data_dir) / "manifest.json" if data.data_dir else None
    manifest = read_json(manifest_path) if manifest_path and manifest_path.is_file() else None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        msg = (f"{manifest_path} is not there (the data folder was moved or deleted); per-split counts "
               "are not shown" if manifest_path else "config.json names no data folder; per-split counts are not shown")
        notes.append(msg)
        return [note(msg)]
    sha = data.sha256
    splits = [s for s in ("train", "test") if s in manifest["splits"]] or list(manifest["splits"])
    names = [str(n) for n in manifest.get("classes") or data.classes]
    rows = []
    for s in splits:
        per_class = manifest["splits"][s].get("per_class") or []
        rows.append([s] + [f"{per_class[i]:,}" if i < len(per_class) else "—" for i in range(len(names))]
                    + [f"{manifest['splits'][s].get('count', 0):,}"])
    parts = [heading(3, f"Images per split and class ({manifest_path})")]
    if manifest.get("limit"):
        parts.append(paragraph(f"prepared with --limit {manifest['limit']}: only the first images of each split"))
    parts.append(table(["split"] + names + ["all"], rows, num=range(1, len(names) + 2)))
    same = [s for s in splits if sha.get(s) and manifest["splits"][s].get("sha256") == sha.get(s)]
    differ = [s for s in splits if sha.get(s) and manifest["splits"][s].get("sha256") not in (None, sha.get(s))]
    if differ:
        msg = (f"{' and '.join(s + '.beton' for s in differ)} in {data.data_dir} "
               f"{'differ' if len(differ) > 1 else 'differs'} from what this run trained on (sha256); the "
               "folder was re-prepared since, so its counts may not describe this run")
        notes.append(msg)
        parts.append(note(msg))
    elif same:
        parts.append(muted(f"The betons in {data.data_dir} are the ones this run trained on (sha256 match)."))
    return parts


def _metrics_body(run: RunDir, rows: list[dict[str, float]], best_epoch: int, decided_on: str, notes: list[str]) -> Raw:
    if run.curves_path.is_file():
        curves = figure(run.curves_path.read_bytes(), "training curves",
                        "curves.png: train (dashed) and test (solid) loss and accuracy per epoch; dotted lines mark LR drops")
    else:
        notes.append(f"{run.curves_path.name} is missing; curves were redrawn from metrics.csv")
        curves = figure(figure_png(curves_figure(rows, f"run {run.path.name}")), "training curves",
                        "redrawn from metrics.csv (curves.png is missing): train dashed, test solid")
    has_val = decided_on == "validation"
    body = [[r["epoch"], f"{r['train_loss']:.4f}", percent(r["train_acc"]),
             *([f"{r.get('val_loss', float('nan')):.4f}", percent(r.get("val_acc"))] if has_val else []),
             f"{r['test_loss']:.4f}", percent(r["test_acc"]), f"{r['lr']:g}", f"{r['seconds']:,.1f}",
             f"{r['img_per_s']:,.1f}"] for r in rows]
    header = ["epoch", "train loss", "train acc", *(["val loss", "val acc"] if has_val else []), "test loss",
              "test acc", "lr", "seconds", "img/s"]
    return join([curves, table(header, body, num=range(len(header)),
                               row_classes=["best" if r["epoch"] == best_epoch else None for r in rows],
                               caption=f"metrics.csv (the best epoch, chosen on {decided_on}, highlighted; the LR "
                                       f"schedule followed the {decided_on} loss)")])


def _evaluation_body(run: RunDir, failure: str | None, notes: list[str]) -> Raw:
    if failure:
        notes.append(failure)
        return note(failure)
    files = AnalysisFiles.of(run)
    json_path, fig_path = files.evaluation, files.confusion_matrix
    ev = read_json(json_path)
    if not isinstance(ev, dict) or not isinstance(ev.get("per_class"), dict):
        msg = f"{json_path} is damaged; run `python cli.py evaluate --run {run.path}` to rewrite it"
        notes.append(msg)
        return note(msg)
    summary = paragraph(f"{ev.get('correct', 0):,} of {ev.get('test_images', 0):,} test images correct: "
                        f"{percent(ev.get('accuracy'))} ({ev.get('checkpoint', '?')}, {ev.get('predictions', '?')}).")
    rows = []
    for name, c in ev["per_class"].items():
        acc = c.get("accuracy")
        rows.append([name, f"{c.get('correct', 0):,}", f"{c.get('total', 0):,}", join([bar(acc), percent(acc)])])
    rows.append(["overall", f"{ev.get('correct', 0):,}", f"{ev.get('test_images', 0):,}",
                 join([bar(ev.get("accuracy")), percent(ev.get("accuracy"))])])
    left = [table(["class", "correct", "total", "accuracy"], rows, num=(1, 2, 3),
                  row_classes=[None] * (len(rows) - 1) + ["total"])]
    cm = ev.get("confusion_matrix") or {}
    counts, names = cm.get("counts"), cm.get("classes")
    if isinstance(counts, list) and isinstance(names, list) and len(counts) == len(names):
        pairs = sorted(((counts[i][j], names[i], names[j]) for i in range(len(names)) for j in range(len(names))
                        if i != j and counts[i][j] > 0), reverse=True)[:5]
        if pairs:
            left.append(table(["true class", "predicted as", "images"], [[t, p, f"{n:,}"] for n, t, p in pairs],
                              num=(2,), caption="most frequent confusions"))
    right = figure(fig_path.read_bytes(), "confusion matrix",
                   f"{fig_path.name}: rows are true classes, colour is the row-normalised fraction") \
        if fig_path.is_file() else note(f"{fig_path} is missing")
    return join([summary, div(*left, cls="side"), right])


def _explain_body(run: RunDir, failure: str | None, notes: list[str]) -> Raw:
    files = AnalysisFiles.of(run)
    parts: list[Raw] = []
    if failure:
        notes.append(failure)
        parts.append(note(failure))
    if files.gallery.is_file():
        parts.append(figure(files.gallery.read_bytes(), "misclassified test images",
                            f"{files.gallery.name}: true → predicted class, confidence and test index"))
    scores: dict[int, dict[str, Any]] = {}
    for layer in CAM_LAYERS:
        fig_path, json_path = files.cam_figure(CAM_METHOD, layer), files.cam_scores(CAM_METHOD, layer)
        data = read_json(json_path) if json_path.is_file() else None
        if not fig_path.is_file() or not isinstance(data, dict):
            if not failure:
                msg = f"{fig_path.name} or {json_path.name} is missing or damaged"
                notes.append(msg)
                parts.append(note(msg))
            continue
        scores[layer] = data
        parts += _layer_parts(layer, data, fig_path)
    if scores:
        parts += _scores_parts(scores)
    return join(parts)


def _layer_parts(layer: int, data: dict[str, Any], fig_path: Path) -> list[Raw]:
    """One layer's heading, mean faithfulness line and CAM figure."""
    res = data.get("cam_resolution") or ["?", "?"]
    mean = data.get("mean")
    line: list[Any] = [
        "Mean faithfulness (ROAD) ", signed(mean) if isinstance(mean, (int, float)) else "—",
        f" ({data.get('better', 'higher is better')}) over {len(data.get('images', []))} images, explaining the "
        f"{data.get('explained_class', 'predicted')} class with {data.get('checkpoint', '?')}."]
    if data.get("empty_maps"):
        line.append(f" {int(data['empty_maps'])} maps are empty (no positive evidence at this layer).")
    return [heading(3, f"{data.get('method', CAM_METHOD)} at {data.get('target_layer', f'layer{layer}[-1]')} "
                       f"({res[0]}×{res[1]} map)"),
            paragraph(*line),
            figure(fig_path.read_bytes(), f"Grad-CAM at layer {layer}",
                   f"{fig_path.name}: each image beside its heat map (red = most relevant)")]


def _scores_parts(scores: dict[int, dict[str, Any]]) -> list[Raw]:
    """What the score means, and the per-image table with one ROAD column per layer."""
    parts = []
    first = next(iter(scores.values()))
    if first.get("meaning"):
        parts.append(muted(f"{first.get('metric', 'ROAD')}. {first['meaning']}"))
    by_index: dict[int, dict[Any, Any]] = {}
    for layer, data in scores.items():
        for img in data.get("images", []):
            entry = by_index.setdefault(int(img.get("index", -1)), {"img": img})
            entry[layer] = img.get("score")
    layers = list(scores)
    rows = []
    for index, entry in by_index.items():
        img = entry["img"]
        rows.append([index, img.get("true", "?"), img.get("predicted", "?"), percent(img.get("confidence"), 0)]
                    + [signed(entry[lay]) if isinstance(entry.get(lay), (int, float)) else "—" for lay in layers])
    rows.append(["mean", "", "", ""] + [signed(scores[lay]["mean"]) if isinstance(scores[lay].get("mean"), (int, float))
                                        else "—" for lay in layers])
    parts.append(table(["test #", "true", "predicted", "confidence"] + [f"ROAD layer{lay}" for lay in layers],
                       rows, num=[0, 3] + list(range(4, 4 + len(layers))),
                       row_classes=[None] * (len(rows) - 1) + ["total"],
                       caption="faithfulness per image (ROAD, in -0.5..0.5)"))
    return parts


def _benchmark_body(run: RunDir, config: dict[str, Any], rows: list[dict[str, float]], notes: list[str]) -> Raw:
    rates = sorted(r["img_per_s"] for r in rows)
    median = rates[len(rates) // 2] if len(rates) % 2 else (rates[len(rates) // 2 - 1] + rates[len(rates) // 2]) / 2
    slowest = max(rows, key=lambda r: r["seconds"])
    pairs = [("device", config.get("device", "—")),
             ("epochs timed", len(rows)),
             ("total epoch time", duration(sum(r["seconds"] for r in rows))),
             ("median training throughput", f"{median:,.1f} img/s"),
             ("slowest epoch", f"epoch {slowest['epoch']}: {duration(slowest['seconds'])}")]
    parts = [figure(figure_png(throughput_figure(rows)), "seconds and images per second per epoch",
                    "from metrics.csv: wall time per epoch and training images per second"),
             key_values(pairs)]
    path = bench_path(run)
    if path.is_file():
        bench = read_json(path)
        if not isinstance(bench, dict):
            msg = f"{path} is not valid JSON; rewrite it with `python cli.py bench train --json {path}`"
            notes.append(msg)
            parts.append(note(msg))
        else:
            parts.append(heading(3, f"{BENCH_FILE}: {bench.get('benchmark', '?')} benchmark"))
            parts.append(table(["figure", "value"], [[code(k), value_text(v)] for k, v in flatten(bench)]))
    else:
        parts.append(muted(f"No {BENCH_FILE} in this run folder; ",
                           code(f"python cli.py bench train --json {run.path}/{BENCH_FILE}"),
                           " adds loader-fed vs model-only vs torchvision throughput here."))
    return join(parts)

