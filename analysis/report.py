"""`report`: one self-contained HTML page for a run, or for a compare folder.

A run's page: a header with status and best accuracy, then the run configuration, the data it was
trained on, training curves and the metrics table, per-class accuracy with the confusion matrix,
the misclassified gallery with Grad-CAM at layers 3 and 4 and their faithfulness scores, and
throughput per epoch (plus the figures of <run>/bench.json when present). Analysis outputs that
are missing are made first with the functions `evaluate` and `explain` use, into <run>/analysis/.

A compare folder's page (a folder with compare.json, written by `compare`): the overlay figure, the
table of best / final accuracy per norm, the shared settings, and a card per norm's run.

Images are embedded as data: URIs, the CSS is inline and a Content-Security-Policy forbids any
fetch, so the single file opens offline. It is written atomically (default <folder>/report.html).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.comparison import COMPARE_FILE, compare_runs, read_compare, write_comparison
from analysis.html import Raw, Section, bar, code, esc, figure, key_values, note, page, table, tag
from common.atomic import write_text
from common.errors import UserError
from common.rundir import RunDir, latest_run

REPORT_FILE = "report.html"
BENCH_FILE = "bench.json"
CAM_LAYERS = (3, 4)
CAM_METHOD = "gradcam"

Log = Callable[[str], None]


@dataclass
class ReportResult:
    path: Path  # the HTML file written
    kind: str  # "run" or "compare"
    folder: Path  # the run or compare folder it describes
    sections: list[str]  # section ids, in page order
    images: int  # embedded PNGs
    size: int  # bytes of the HTML file
    made: list[Path] = field(default_factory=list)  # analysis outputs created for the report
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why


@dataclass
class _Doc:
    title: str
    heading: str
    subtitle: str
    facts: list[tuple[Any, Any]]
    sections: list[Section]
    made: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def make_report(target: str | Path | None = None, out: str | Path | None = None,
                runs_root: str | Path = "runs", explain_count: int = 20,
                log: Log = lambda m: None) -> ReportResult:
    """Write the HTML report for a run or compare folder (default: the newest run under runs_root)."""
    folder = _resolve(target, runs_root)
    out_path = Path(out) if out is not None else folder / REPORT_FILE
    if out_path.is_dir():
        raise UserError(f"--out {out_path} is a folder; give a file name such as {out_path / REPORT_FILE}")
    if (folder / COMPARE_FILE).is_file():
        kind, doc = "compare", _compare_doc(folder, out_path, log)
    else:
        kind, doc = "run", _run_doc(RunDir(folder), explain_count, log)
    footer = (f"Made by python cli.py report on {time.strftime('%Y-%m-%d %H:%M:%S')} from "
              f"{folder.resolve()}. Self-contained: every figure is embedded and the page loads "
              "nothing from the network.")
    text = page(doc.title, doc.heading, doc.subtitle, doc.facts, doc.sections, footer)
    write_text(out_path, text)
    return ReportResult(out_path, kind, folder, [s.id for s in doc.sections], text.count("<img "),
                        len(text.encode("utf-8")), doc.made, doc.notes)


def _resolve(target: str | Path | None, runs_root: str | Path) -> Path:
    if target is None:
        return latest_run(runs_root).path
    path = Path(target)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run directory written by `python cli.py train` "
                        "or a compare folder")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run directory; pass the folder that holds config.json "
                        f"or {COMPARE_FILE}")
    if not (path / COMPARE_FILE).is_file() and not (path / "config.json").is_file():
        raise UserError(f"{path} is not a run directory (no config.json) nor a compare folder (no "
                        f"{COMPARE_FILE}); pass a folder written by `python cli.py train` or `compare`")
    return path


# ---- formatting ------------------------------------------------------------------------------

def _pct(x: Any, digits: int = 2) -> str:
    return "—" if not isinstance(x, (int, float)) else f"{100 * x:.{digits}f}%"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {secs:04.1f} s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours} h {minutes:02d} min"


def _value(v: Any) -> str:
    """A config or JSON value as text: JSON spellings for null and booleans, short floats."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def _signed(x: float) -> Raw:
    cls = "pos" if x > 0.0005 else "neg" if x < -0.0005 else None
    return tag("span", f"{x + 0.0:+.3f}", cls=cls)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            items += _flatten(v, f"{prefix}{k}.")
        else:
            items.append((f"{prefix}{k}", v))
    return items


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _status(status: str) -> Raw:
    known = status if status in ("finished", "running", "interrupted", "diverged", "failed") else "unknown"
    return tag("span", status, cls=f"status status-{known}")


# ---- figures made in memory -------------------------------------------------------------------

def _png(fig) -> bytes:
    from analysis.figures import DPI

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def curves_png(rows: list[dict[str, float]], title: str = "") -> bytes:
    """The run's curves drawn in memory, for a run without curves.png."""
    from analysis.figures import curves_figure

    return _png(curves_figure(rows, title))


def throughput_png(rows: list[dict[str, float]]) -> bytes:
    """Seconds per epoch and training images per second per epoch."""
    from matplotlib.ticker import MaxNLocator

    from analysis.figures import FONT, new_figure

    fig = new_figure(10, 3.0, layout="constrained")
    ax_s, ax_r = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    width = 0.6 if len(rows) > 1 else 0.4
    ax_s.bar(epochs, [r["seconds"] for r in rows], width=width, color="tab:blue")
    ax_s.set_ylabel("seconds", fontsize=FONT + 1)
    ax_s.set_title("Wall time per epoch (train + test pass)", fontsize=FONT + 1)
    ax_r.bar(epochs, [r["img_per_s"] for r in rows], width=width, color="tab:green")
    ax_r.set_ylabel("training images / s", fontsize=FONT + 1)
    ax_r.set_title("Training throughput per epoch", fontsize=FONT + 1)
    for ax in (ax_s, ax_r):
        ax.set_xlabel("epoch", fontsize=FONT + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(labelsize=FONT)
        if len(rows) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    return _png(fig)


# ---- a run -------------------------------------------------------------------------------------

def _run_doc(run: RunDir, explain_count: int, log: Log) -> _Doc:
    config = run.read_config()
    try:
        rows = run.read_metrics()
    except (ValueError, TypeError, KeyError):
        raise UserError(f"{run.metrics_path} is damaged (not the CSV `train` writes); the run cannot "
                        "be reported") from None
    if not rows or not run.has_checkpoint("last"):
        raise UserError(f"{run.path} has not finished an epoch yet; train at least one epoch before "
                        "making a report")
    summary = run.read_summary()
    made: list[Path] = []
    notes: list[str] = []
    train = config.get("train") or {}

    best = max(rows, key=lambda r: r["test_acc"])
    best_acc = summary.get("best_acc", best["test_acc"])
    best_epoch = summary.get("best_epoch", best["epoch"])
    status = str(summary.get("status", "unknown"))
    epochs_total = summary.get("epochs") or (train.get("optim") or {}).get("epochs")
    norm = (train.get("model") or {}).get("norm", "?")
    facts = [
        ("status", _status(status)),
        ("best test accuracy", f"{_pct(best_acc)} · epoch {best_epoch}"),
        ("final test accuracy", _pct(rows[-1]["test_acc"])),
        ("epochs", f"{rows[-1]['epoch']} / {epochs_total}" if epochs_total else str(rows[-1]["epoch"])),
        ("wall time", _duration(summary.get("wall_seconds", sum(r["seconds"] for r in rows)))),
        ("model", f"ResNet-18 · {norm} norm"),
    ]
    subtitle = " · ".join(str(x) for x in (run.path.resolve(), config.get("device"), config.get("created")) if x)

    sections = [
        Section("config", "Run configuration", _config_body(config)),
        Section("data", "Data", _data_body(config, notes)),
        Section("metrics", "Training curves and metrics", _metrics_body(run, rows, best["epoch"], notes)),
        Section("evaluation", "Per-class accuracy and confusion matrix", _evaluation_body(run, made, notes, log)),
        Section("explain", "Misclassified images and Grad-CAM", _explain_body(run, explain_count, made, notes, log)),
        Section("benchmark", "Throughput and benchmarks", _benchmark_body(run, config, rows, notes)),
    ]
    return _Doc(f"Run {run.path.name} · CIFAR-10 report", f"Run {run.path.name}", subtitle, facts,
                sections, made, notes)


def _config_body(config: dict[str, Any]) -> str:
    train = config.get("train") or {}
    groups: list[tuple[str, list[tuple[str, Any]]]] = []
    other: list[tuple[str, Any]] = []
    for key, value in train.items():
        if isinstance(value, dict):
            groups.append((key, [(k, _value(v)) for k, v in _flatten(value)]))
        else:
            other.append((key, _value(value)))
    if other:
        groups.append(("other", other))
    env: list[tuple[str, Any]] = [("device", config.get("device", "—")), ("created", config.get("created", "—"))]
    command = config.get("command")
    if isinstance(command, list):
        env.append(("command", code("python " + " ".join(shlex.quote(str(c)) for c in command))))
    versions = config.get("versions") or {}
    env += [(name, version) for name, version in versions.items()]
    parts = ['<p class="muted">The <code>train</code> record of <code>config.json</code>: every setting '
             "as training resolved it.</p>", '<div class="grid">']
    parts += [key_values(pairs, caption=name) for name, pairs in groups]
    parts.append("</div>")
    parts.append(key_values(env, caption="device and package versions"))
    return "".join(parts)


def _data_body(config: dict[str, Any], notes: list[str]) -> str:
    data = config.get("data") or {}
    official = data.get("official")
    official_text = ("yes (md5 of the official archive)" if official is True else
                     "no: a valid CIFAR-10 layout, but not the official release (md5 differs)"
                     if official is False else "—")
    classes = data.get("classes") or []
    sha = data.get("sha256") or {}
    pairs: list[tuple[str, Any]] = [
        ("data folder", code(data.get("data_dir", "—"))),
        ("source", code(data.get("source", "—"))),
        ("official release", official_text),
        ("classes", f"{len(classes)}: {', '.join(map(str, classes))}" if classes else "—"),
    ]
    pairs += [(f"sha256 of {split}.beton", code(digest)) for split, digest in sha.items()]
    for name, key in (("train mean (R, G, B)", "train_mean"), ("train std (R, G, B)", "train_std")):
        values = data.get(key)
        pairs.append((name, ", ".join(f"{v:.2f}" for v in values) if isinstance(values, list) else "—"))
    parts = ['<p class="muted">What <code>config.json</code> recorded about the data this run was '
             "trained on (0-255 pixel scale).</p>", key_values(pairs)]

    data_dir = data.get("data_dir")
    manifest_path = Path(data_dir) / "manifest.json" if data_dir else None
    manifest = _read_json(manifest_path) if manifest_path and manifest_path.is_file() else None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        msg = (f"{manifest_path} is not there (the data folder was moved or deleted); per-split counts "
               "are not shown" if manifest_path else "config.json names no data folder; per-split counts are not shown")
        notes.append(msg)
        parts.append(note(msg))
        return "".join(parts)

    splits = [s for s in ("train", "test") if s in manifest["splits"]] or list(manifest["splits"])
    names = [str(n) for n in manifest.get("classes") or classes]
    rows = []
    for s in splits:
        per_class = manifest["splits"][s].get("per_class") or []
        rows.append([s] + [f"{per_class[i]:,}" if i < len(per_class) else "—" for i in range(len(names))]
                    + [f"{manifest['splits'][s].get('count', 0):,}"])
    parts.append(tag("h3", f"Images per split and class ({manifest_path})"))
    if manifest.get("limit"):
        parts.append(tag("p", f"prepared with --limit {manifest['limit']}: only the first images of each split"))
    parts.append(table(["split"] + names + ["all"], rows, num=range(1, len(names) + 2)))
    same = [s for s in splits if sha.get(s) and manifest["splits"][s].get("sha256") == sha.get(s)]
    differ = [s for s in splits if sha.get(s) and manifest["splits"][s].get("sha256") not in (None, sha.get(s))]
    if differ:
        msg = (f"{' and '.join(s + '.beton' for s in differ)} in {data_dir} "
               f"{'differ' if len(differ) > 1 else 'differs'} from what this run trained on (sha256); the "
               "folder was re-prepared since, so its counts may not describe this run")
        notes.append(msg)
        parts.append(note(msg))
    elif same:
        parts.append(tag("p", f"The betons in {data_dir} are the ones this run trained on (sha256 match).",
                         cls="muted"))
    return "".join(parts)


def _metrics_body(run: RunDir, rows: list[dict[str, float]], best_epoch: int, notes: list[str]) -> str:
    parts = []
    if run.curves_path.is_file():
        parts.append(figure(run.curves_path.read_bytes(), "training curves",
                            "curves.png: train (dashed) and test (solid) loss and accuracy per epoch; dotted lines mark LR drops"))
    else:
        notes.append(f"{run.curves_path.name} is missing; curves were redrawn from metrics.csv")
        parts.append(figure(curves_png(rows, f"run {run.path.name}"), "training curves",
                            "redrawn from metrics.csv (curves.png is missing): train dashed, test solid"))
    body = [[r["epoch"], f"{r['train_loss']:.4f}", _pct(r["train_acc"]), f"{r['test_loss']:.4f}",
             _pct(r["test_acc"]), f"{r['lr']:g}", f"{r['seconds']:,.1f}", f"{r['img_per_s']:,.1f}"] for r in rows]
    parts.append(table(["epoch", "train loss", "train acc", "test loss", "test acc", "lr", "seconds", "img/s"],
                       body, num=range(8), row_classes=["best" if r["epoch"] == best_epoch else None for r in rows],
                       caption="metrics.csv (best test accuracy highlighted)"))
    return "".join(parts)


def _evaluation_body(run: RunDir, made: list[Path], notes: list[str], log: Log) -> str:
    json_path = run.analysis_dir / "evaluation.json"
    fig_path = run.analysis_dir / "confusion_matrix.png"
    parts = []
    if not (json_path.is_file() and fig_path.is_file()):
        from analysis.evaluate import evaluate

        log(f"report: {run.analysis_dir.name}/evaluation.json is missing; running evaluate")
        try:
            result = evaluate(run.path, log=log)
            made += [result.figure, result.json_path]
        except UserError as exc:
            msg = f"per-class accuracy could not be computed: {exc}"
            notes.append(msg)
            return note(msg)
    ev = _read_json(json_path)
    if not isinstance(ev, dict) or not isinstance(ev.get("per_class"), dict):
        msg = f"{json_path} is damaged; run `python cli.py evaluate --run {run.path}` to rewrite it"
        notes.append(msg)
        return note(msg)
    parts.append(tag("p", f"{ev.get('correct', 0):,} of {ev.get('test_images', 0):,} test images correct: "
                          f"{_pct(ev.get('accuracy'))} ({ev.get('checkpoint', '?')}, {ev.get('predictions', '?')})."))
    rows = []
    for name, c in ev["per_class"].items():
        acc = c.get("accuracy")
        rows.append([name, f"{c.get('correct', 0):,}", f"{c.get('total', 0):,}", Raw(bar(acc) + esc(_pct(acc)))])
    rows.append(["overall", f"{ev.get('correct', 0):,}", f"{ev.get('test_images', 0):,}",
                 Raw(bar(ev.get("accuracy")) + esc(_pct(ev.get("accuracy"))))])
    left = [table(["class", "correct", "total", "accuracy"], rows, num=(1, 2, 3),
                  row_classes=[None] * (len(rows) - 1) + ["total"])]
    cm = (ev.get("confusion_matrix") or {})
    counts, names = cm.get("counts"), cm.get("classes")
    if isinstance(counts, list) and isinstance(names, list) and len(counts) == len(names):
        pairs = sorted(((counts[i][j], names[i], names[j]) for i in range(len(names)) for j in range(len(names))
                        if i != j and counts[i][j] > 0), reverse=True)[:5]
        if pairs:
            left.append(table(["true class", "predicted as", "images"], [[t, p, f"{n:,}"] for n, t, p in pairs],
                              num=(2,), caption="most frequent confusions"))
    right = figure(fig_path.read_bytes(), "confusion matrix",
                   "confusion_matrix.png: rows are true classes, colour is the row-normalised fraction") \
        if fig_path.is_file() else note(f"{fig_path} is missing")
    parts.append(f'<div class="side">{"".join(left)}</div>{right}')
    return "".join(parts)


def _explain_files(run: RunDir) -> list[Path]:
    files = [run.analysis_dir / "misclassified.png"]
    for layer in CAM_LAYERS:
        files += [run.analysis_dir / f"{CAM_METHOD}_layer{layer}.png",
                  run.analysis_dir / f"{CAM_METHOD}_layer{layer}_scores.json"]
    return files


def _explain_body(run: RunDir, count: int, made: list[Path], notes: list[str], log: Log) -> str:
    parts = []
    failed = False
    if not all(p.is_file() for p in _explain_files(run)):
        from analysis.explain import explain

        log(f"report: Grad-CAM figures are missing; running explain for layers {', '.join(map(str, CAM_LAYERS))}")
        try:
            result = explain(run.path, layers=list(CAM_LAYERS), count=count, method=CAM_METHOD, log=log)
            made += result.files
        except UserError as exc:
            msg = f"Grad-CAM could not be computed: {exc}"
            notes.append(msg)
            parts.append(note(msg))
            failed = True
    gallery = run.analysis_dir / "misclassified.png"
    if gallery.is_file():
        parts.append(figure(gallery.read_bytes(), "misclassified test images",
                            "misclassified.png: true → predicted class, confidence and test index"))
    scores: dict[int, dict[str, Any]] = {}
    for layer in CAM_LAYERS:
        fig_path = run.analysis_dir / f"{CAM_METHOD}_layer{layer}.png"
        json_path = run.analysis_dir / f"{CAM_METHOD}_layer{layer}_scores.json"
        data = _read_json(json_path) if json_path.is_file() else None
        if not fig_path.is_file() or not isinstance(data, dict):
            if not failed:
                msg = f"{fig_path.name} or {json_path.name} is missing or damaged"
                notes.append(msg)
                parts.append(note(msg))
            continue
        scores[layer] = data
        res = data.get("cam_resolution") or ["?", "?"]
        mean = data.get("mean")
        parts.append(tag("h3", f"{data.get('method', CAM_METHOD)} at {data.get('target_layer', f'layer{layer}[-1]')} "
                               f"({res[0]}×{res[1]} map)"))
        line = (f"Mean faithfulness (ROAD) {_signed(mean) if isinstance(mean, (int, float)) else '—'} "
                f"({esc(data.get('better', 'higher is better'))}) over {len(data.get('images', []))} images, "
                f"explaining the {esc(data.get('explained_class', 'predicted'))} class with {esc(data.get('checkpoint', '?'))}.")
        if data.get("empty_maps"):
            line += f" {int(data['empty_maps'])} maps are empty (no positive evidence at this layer)."
        parts.append(f"<p>{line}</p>")
        parts.append(figure(fig_path.read_bytes(), f"Grad-CAM at layer {layer}",
                            f"{fig_path.name}: each image beside its heat map (red = most relevant)"))
    if scores:
        first = next(iter(scores.values()))
        if first.get("meaning"):
            parts.append(tag("p", f"{first.get('metric', 'ROAD')}. {first['meaning']}", cls="muted"))
        by_index: dict[int, dict[str, Any]] = {}
        for layer, data in scores.items():
            for img in data.get("images", []):
                entry = by_index.setdefault(int(img.get("index", -1)), {"img": img})
                entry[layer] = img.get("score")
        layers = list(scores)
        rows = []
        for index, entry in by_index.items():
            img = entry["img"]
            rows.append([index, img.get("true", "?"), img.get("predicted", "?"), _pct(img.get("confidence"), 0)]
                        + [_signed(entry[lay]) if isinstance(entry.get(lay), (int, float)) else "—" for lay in layers])
        rows.append(["mean", "", "", ""] + [_signed(scores[lay]["mean"]) if isinstance(scores[lay].get("mean"), (int, float))
                                            else "—" for lay in layers])
        parts.append(table(["test #", "true", "predicted", "confidence"] + [f"ROAD layer{lay}" for lay in layers],
                           rows, num=[0, 3] + list(range(4, 4 + len(layers))),
                           row_classes=[None] * (len(rows) - 1) + ["total"],
                           caption="faithfulness per image (ROAD, in -0.5..0.5)"))
    return "".join(parts)


def _benchmark_body(run: RunDir, config: dict[str, Any], rows: list[dict[str, float]], notes: list[str]) -> str:
    rates = sorted(r["img_per_s"] for r in rows)
    median = rates[len(rates) // 2] if len(rates) % 2 else (rates[len(rates) // 2 - 1] + rates[len(rates) // 2]) / 2
    slowest = max(rows, key=lambda r: r["seconds"])
    pairs = [("device", config.get("device", "—")),
             ("epochs timed", len(rows)),
             ("total epoch time", _duration(sum(r["seconds"] for r in rows))),
             ("median training throughput", f"{median:,.1f} img/s"),
             ("slowest epoch", f"epoch {slowest['epoch']}: {_duration(slowest['seconds'])}")]
    parts = [figure(throughput_png(rows), "seconds and images per second per epoch",
                    "from metrics.csv: wall time per epoch and training images per second"),
             key_values(pairs)]
    bench_path = run.path / BENCH_FILE
    if bench_path.is_file():
        bench = _read_json(bench_path)
        if not isinstance(bench, dict):
            msg = f"{bench_path} is not valid JSON; rewrite it with `python cli.py bench train --json {bench_path}`"
            notes.append(msg)
            parts.append(note(msg))
        else:
            parts.append(tag("h3", f"{BENCH_FILE}: {bench.get('benchmark', '?')} benchmark"))
            parts.append(table(["figure", "value"], [[code(k), _value(v)] for k, v in _flatten(bench)]))
    else:
        parts.append(tag("p", Raw(f"No {BENCH_FILE} in this run folder; "
                                  f"{code(f'python cli.py bench train --json {run.path}/{BENCH_FILE}')} adds "
                                  "loader-fed vs model-only vs torchvision throughput here."), cls="muted"))
    return "".join(parts)


# ---- a compare folder --------------------------------------------------------------------------

def _href(target: Path, out_path: Path) -> str:
    rel = os.path.relpath(target.resolve(), out_path.parent.resolve())
    return urllib.parse.quote(rel.replace(os.sep, "/"))


def _compare_doc(folder: Path, out_path: Path, log: Log) -> _Doc:
    spec = read_compare(folder)
    run_paths = compare_runs(folder, spec)
    made: list[Path] = []
    notes: list[str] = []
    fig_path, table_path = folder / "comparison.png", folder / "comparison.json"
    if not (fig_path.is_file() and table_path.is_file()):
        log(f"report: {folder.name}/comparison.json or comparison.png is missing; rebuilding them from the runs")
        result = write_comparison(folder)
        made += [Path(result.figure), table_path]
    table_data = _read_json(table_path)
    rows: list[dict[str, Any]] = table_data.get("rows", []) if isinstance(table_data, dict) else []
    if not isinstance(rows, list):
        rows = []
    norms = [str(n) for n in spec.get("norms") or [r.get("norm") for r in rows]]

    def run_path(norm: str, row: dict[str, Any] | None) -> Path:
        if norm in run_paths:
            return run_paths[norm].path
        p = Path((row or {}).get("run") or norm)
        return p if p.is_absolute() else folder / p

    accs = [r for r in rows if isinstance(r.get("best_test_acc"), (int, float))]
    best = max(accs, key=lambda r: r["best_test_acc"]) if accs else None
    settings = spec.get("settings") or {}
    facts = [("norms", ", ".join(norms) or "—"),
             ("best", f"{best['norm']} · {_pct(best['best_test_acc'])}" if best else "—"),
             ("epochs", _value(settings.get("epochs", "—"))),
             ("total wall time", _duration(sum(r.get("wall_seconds") or 0 for r in rows)) if rows else "—")]

    body = []
    if fig_path.is_file():
        body.append(figure(fig_path.read_bytes(), "comparison of norms",
                           "comparison.png: train (dashed) and test (solid) per norm"))
    else:
        notes.append(f"{fig_path} is missing")
        body.append(note(f"{fig_path} is missing"))
    trows, classes = [], []
    for r in rows:
        norm = str(r.get("norm", "?"))
        path = run_path(norm, r)
        trows.append([norm, Raw(f'<a href="{esc(_href(path, out_path))}/">{esc(path.name)}</a>'),
                      _value(r.get("epochs_done", "—")), _pct(r.get("best_test_acc")), _value(r.get("best_epoch", "—")),
                      _pct(r.get("final_test_acc")), _pct(r.get("final_train_acc")), _duration(r.get("wall_seconds")),
                      f"{r['img_per_s']:,.1f}" if isinstance(r.get("img_per_s"), (int, float)) else "—"])
        classes.append("best" if r is best else None)
    if trows:
        body.append(table(["norm", "run", "epochs", "best test acc", "best epoch", "final test acc",
                           "final train acc", "wall time", "img/s"], trows, num=range(2, 9), row_classes=classes,
                          caption="comparison.json (best test accuracy highlighted)"))
    else:
        notes.append(f"{table_path} has no rows")
        body.append(note(f"{table_path} has no rows; rerun `python cli.py compare`"))

    settings_body = key_values([(k, _value(v)) for k, v in _flatten(settings)] +
                               [("created", spec.get("created", "—"))], caption="compare.json settings")

    cards = []
    by_norm = {str(r.get("norm")): r for r in rows}
    for norm in norms:
        path = run_path(norm, by_norm.get(norm))
        head = (f'<h3>{esc(norm)}: <a href="{esc(_href(path, out_path))}/">{esc(path.name)}</a></h3>')
        if not (path / "config.json").is_file():
            msg = f"the {norm} run {path} is missing or not a run directory"
            notes.append(msg)
            cards.append(f'<div class="card">{head}{note(msg)}</div>')
            continue
        run = RunDir(path)
        summary = run.read_summary()
        try:
            mrows = run.read_metrics()
        except (ValueError, TypeError, KeyError):
            mrows = []
        pairs = [("status", _status(str(summary.get("status", "unknown")))),
                 ("best test accuracy", f"{_pct(summary.get('best_acc'))} (epoch {summary.get('best_epoch', '—')})"),
                 ("final test accuracy", _pct(mrows[-1]["test_acc"]) if mrows else "—"),
                 ("epochs done", f"{len(mrows)} / {summary.get('epochs', '—')}"),
                 ("wall time", _duration(summary.get("wall_seconds")))]
        if (path / REPORT_FILE).is_file():
            pairs.append(("full report", Raw(f'<a href="{esc(_href(path / REPORT_FILE, out_path))}">'
                                             f"{esc(REPORT_FILE)}</a>")))
        else:
            pairs.append(("full report", code(f"python cli.py report {path}")))
        inner = key_values(pairs)
        if run.curves_path.is_file():
            inner = (f'<div class="two"><div>{inner}</div><div>'
                     f'{figure(run.curves_path.read_bytes(), f"curves of the {norm} run", "curves.png")}</div></div>')
        cards.append(f'<div class="card">{head}{inner}</div>')

    sections = [Section("comparison", "Comparison", "".join(body)),
                Section("settings", "Settings", settings_body),
                Section("runs", "Runs", "".join(cards) or note("compare.json lists no runs"))]
    subtitle = " · ".join(str(x) for x in (folder.resolve(), spec.get("created")) if x)
    return _Doc(f"Comparison {folder.name} · CIFAR-10 report", f"Comparison {folder.name}", subtitle, facts,
                sections, made, notes)
