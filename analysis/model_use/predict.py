"""`predict`: classify the user's own image files with a trained run, optionally with Grad-CAM.

Images are read by analysis/model_use/image_files.py (its docstring states the crop/resize/alpha rule),
normalised with the mean/std the run recorded in config.json and named with its class list, so a
CIFAR-10 test image saved as PNG gets `evaluate`'s prediction (same top-1, probabilities within
1e-5: only the memory layout differs, see forward_probs). Work is done in
batches of 256 images: one decode pass, one model pass (channels-last, faster than NCHW on a CPU),
and with --cam one Grad-CAM pass per batch, so a folder of thousands of images never holds more
than one batch of pixels in memory. The pass is compute-bound (mostly convolutions), so fp32 is
kept: bf16 would be faster but would no longer give exactly `evaluate`'s predictions
(measurements: docs/BENCHMARKS.md, 'Moved from code comments').

A file that cannot be read is named on one line and skipped; the others are still predicted. The
command then exits 1 (some failed) or 2 (none could be read), through `PartialFailure`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.loading import RunInputs, open_run, resolve_run, to_model_input
from analysis.model_use.image_files import RULE, ImageInfo, collect_images, read_many
from common.atomic import write_json
from common.errors import UserError
from common.timing import Timings

BATCH = 256
PREDICTIONS_DIR = "predictions"  # default --out for CAM figures, inside the run directory

Log = Callable[[str], None]


class PartialFailure(UserError):
    """Some files were skipped but the rest were predicted: exit status 1, not 2."""

    exit_code = 1


@dataclass
class ImagePrediction:
    file: Path
    info: ImageInfo
    probs: np.ndarray  # (classes,) float32 softmax
    cam: Path | None = None  # with --cam: the figure with every requested layer

    @property
    def predicted(self) -> int:
        return int(self.probs.argmax())

    def top(self, k: int) -> list[tuple[int, float]]:
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(int(c), float(self.probs[c])) for c in order]


@dataclass
class PredictResult:
    run: Path
    which: str
    classes: list[str]
    top_k: int
    predictions: list[ImagePrediction]
    failed: list[tuple[str, str]]  # (file or argument, reason)
    ignored: int  # non-image files skipped inside folders
    layers: list[int]
    cam_dir: Path | None
    json_path: Path | None
    timings: dict[str, float]

    @property
    def attempted(self) -> int:
        return len(self.predictions) + len(self.failed)


def open_for_predict(run_dir: str | Path | None, which: str, runs_root: str | Path = "runs") -> RunInputs:
    """The run's checkpoint choice, mean/std and class names, without needing its data folder.

    Predicting reads no test set, so a run copied to another machine without data/ must still
    work: the run folder itself stands in for the data folder open_run checks (never read).
    """
    run = resolve_run(run_dir, runs_root)
    return open_run(run.path, which, data_dir=run.path, runs_root=runs_root)


def _check_folder_target(out: Path) -> None:
    """--out must be a folder or a path one can be created at: not a file, nor below one."""
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == out else f"lies below the file {existing}"
        raise UserError(f"--out {out} {where}; --cam writes one figure per image into a folder: give a folder")


def forward_probs(model, images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Softmax (N, classes) float32 for uint8 NHWC images, in one pass (the caller batches).

    Same normalisation as analysis.loading.to_model_input; only the memory format differs
    (channels-last), which changes logits by float rounding (~1e-6), never the top-1 in practice.
    """
    import torch

    x = to_model_input(images, mean, std).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return torch.softmax(model(x).float(), dim=1).numpy().astype(np.float32)


def predict(paths: Sequence[str | Path], run_dir: str | Path | None = None, which: str = "best",
            top_k: int = 3, cam: bool = False, layers: Sequence[int] = (), out: str | Path | None = None,
            json_path: str | Path | None = None, batch_size: int = BATCH, runs_root: str | Path = "runs",
            log: Log = lambda m: None, skipped: Log = lambda m: None) -> PredictResult:
    """Top-k classes for every readable image in `paths`; see the module docstring.

    `skipped` receives one line per file that could not be used, as it happens; `log` gets notes.
    Raises UserError (exit 2) when nothing could be read; partial failures are left to the caller
    (the result lists them) so the table and JSON are still produced first.
    """
    from analysis.gradcam import check_layers

    # Every flag is checked before any slow work or any write.
    if not paths:
        raise UserError("give at least one image file, folder or glob")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if layers and not cam:
        raise UserError("--layer chooses where --cam looks; add --cam (or drop --layer)")
    if out is not None and not cam:
        raise UserError("--out is where --cam writes its figures; add --cam (or drop --out)")
    chosen_layers = check_layers(list(layers) or [3]) if cam else []
    if json_path is not None and Path(json_path).is_dir():
        raise UserError(f"--json {json_path} is a folder; give a file name such as predictions.json")
    if out is not None:
        _check_folder_target(Path(out))

    timings = Timings()
    with timings.phase("load"):
        inputs = open_for_predict(run_dir, which, runs_root)
        if top_k > len(inputs.classes):
            raise UserError(f"--top-k must be at most {len(inputs.classes)} (the number of classes), got {top_k}")
        collected = collect_images(paths)
        failed: list[tuple[str, str]] = []
        for spec in collected.missing:
            reason = "no such file or folder, and no file matches it as a glob"
            failed.append((spec, reason))
            skipped(f"skipped {spec}: {reason}")
        if not collected.files:
            extra = f" ({collected.ignored} files without an image extension ignored)" if collected.ignored else ""
            raise UserError(f"no image files found in {', '.join(map(str, paths))}{extra}; give PNG, JPEG, BMP or "
                            "WebP files, folders of them, or globs")
        if collected.ignored:
            log(f"note: ignored {collected.ignored} file(s) without an image extension inside the given folders")

        from analysis.loading import load_model

        model = load_model(inputs)
        import torch

        model = model.to(memory_format=torch.channels_last)

    cam_dir = Path(out) if out is not None else inputs.run.path / PREDICTIONS_DIR
    used_names: set[str] = set()
    predictions: list[ImagePrediction] = []
    timings.update(read=0.0, model=0.0, cams=0.0)
    for start in range(0, len(collected.files), batch_size):
        batch_paths = collected.files[start:start + batch_size]
        good: list[tuple[np.ndarray, ImageInfo]] = []
        with timings.phase("read"):
            for path, (pixels, info) in zip(batch_paths, read_many(batch_paths)):
                if pixels is None or not isinstance(info, ImageInfo):
                    failed.append((str(path), str(info)))
                    skipped(f"skipped {path}: {info}")
                else:
                    good.append((pixels, info))
        if not good:
            continue
        images = np.stack([g[0] for g in good])
        with timings.phase("model"):
            probs = forward_probs(model, images, inputs.mean, inputs.std)
        batch_preds = [ImagePrediction(info.path, info, p) for (_, info), p in zip(good, probs)]
        if cam:
            with timings.phase("cams"):
                _write_cams(model, images, batch_preds, chosen_layers, inputs, cam_dir, used_names)
        predictions.extend(batch_preds)

    if not predictions:
        what = "the file could not" if len(failed) == 1 else f"none of the {len(failed)} files could"
        raise UserError(f"{what} be read (named above); give PNG, JPEG, BMP or WebP images")
    result = PredictResult(inputs.run.path, inputs.which, inputs.classes, top_k, predictions, failed,
                           collected.ignored, chosen_layers, cam_dir if cam else None,
                           Path(json_path) if json_path is not None else None, timings)
    if json_path is not None:
        write_json(json_path, to_json(result))
    timings.stop()
    return result


def _write_cams(model, images: np.ndarray, preds: list[ImagePrediction], layers: list[int],
                inputs: RunInputs, out_dir: Path, used_names: set[str]) -> None:
    """Grad-CAM of the predicted class at each layer (one pass for all), one figure per image."""
    from analysis.gradcam import compute_cams, target_block

    x = to_model_input(images, inputs.mean, inputs.std)
    explained = [p.predicted for p in preds]
    batch = compute_cams(model, [target_block(model, layer) for layer in layers], x, explained, "gradcam")
    for k, pred in enumerate(preds):
        name = _unique_name(pred.file.stem, used_names)
        path = plot_prediction_cams(pred, images[k], batch.cams[k], layers, batch.resolutions, inputs,
                                    out_dir / f"{name}_gradcam.png")
        pred.cam = path


def _unique_name(stem: str, used: set[str]) -> str:
    """cat.png and other/cat.jpg must not overwrite each other's figure: cat, cat-2, cat-3, ..."""
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name


def plot_prediction_cams(pred: ImagePrediction, image: np.ndarray, cams: np.ndarray, layers: list[int],
                         resolutions: list[tuple[int, int]], inputs: RunInputs, path: Path) -> Path:
    """The original (centre crop at 160 px) beside one Grad-CAM overlay per layer, in one PNG.

    The overlays reuse analysis/gallery.py's blend on the 32×32 model input, so they look exactly
    like `explain`'s; the first tile shows the user's picture at a readable size.
    """
    from analysis.figures import FONT, save_figure
    from analysis.gallery import PT, SCALE, Grid, draw, overlay, upscale_nearest
    from analysis.model_use.image_files import SIZE, readable_crop

    tile = SIZE * SCALE
    grid = Grid(rows=1, cols=1 + len(layers), tile=tile, gap=28)
    grid.header = int(5.0 * FONT * PT)  # two title lines: the file and verdict, then the run
    grid.margin = max(grid.margin, (520 - (grid.width - 2 * grid.margin)) // 2)  # room for the title
    canvas = np.full((grid.height, grid.width, 3), 255, dtype=np.uint8)
    try:
        shown = readable_crop(pred.file, tile)
    except OSError:  # the file changed since it was read: show what the model saw instead
        shown = upscale_nearest(image, SCALE)
    y = grid.y0(0)
    canvas[y:y + tile, grid.x0(0):grid.x0(0) + tile] = shown
    w, h = pred.info.size
    texts = [(grid.x0(0) + tile // 2, y, f"original {w}×{h}\n{pred.info.format} {pred.info.mode}")]
    cls, prob = inputs.classes[pred.predicted], float(pred.probs[pred.predicted])
    for i, layer in enumerate(layers):
        x = grid.x0(1 + i)
        canvas[y:y + tile, x:x + tile] = overlay(image, cams[i])
        empty = "  (empty map)" if not cams[i].max() > 0 else ""
        rh, rw = resolutions[i]
        texts.append((x + tile // 2, y, f"layer{layer} ({rh}×{rw} map)\nGrad-CAM of {cls}{empty}"))
    name = pred.file.name if len(pred.file.name) <= 40 else pred.file.name[:37] + "…"
    title = f"{name} → {cls} {100 * prob:.0f}%\nrun {inputs.name}, {inputs.which}.pt"
    return save_figure(draw(grid, canvas, texts, title), path)


def to_json(result: PredictResult) -> dict:
    """The table as data: per file its top-k classes and probabilities, plus the skipped files."""
    return {
        "run": str(result.run), "checkpoint": f"{result.which}.pt", "classes": result.classes,
        "top_k": result.top_k, "preprocessing": RULE,
        "images": [{
            "file": str(p.file), "size": list(p.info.size), "mode": p.info.mode, "format": p.info.format,
            "predicted": result.classes[p.predicted],
            "top": [{"class": result.classes[c], "prob": round(prob, 6)} for c, prob in p.top(result.top_k)],
            **({"cam": str(p.cam)} if p.cam is not None else {}),
        } for p in result.predictions],
        "failed": [{"file": f, "error": reason} for f, reason in result.failed],
    }


def format_table(result: PredictResult) -> str:
    """One line per image: the file, then its top-k classes with probabilities."""
    names = [str(p.file) for p in result.predictions]
    fw = max(4, *(len(n) for n in names))
    nw = max(len(c) for c in result.classes)
    cw = nw + 7  # "automobile  99.9%"
    head = f"{'file':<{fw}}  " + "  ".join(f"{f'top-{i + 1}':<{cw}}" for i in range(result.top_k))
    lines = [head.rstrip()]
    for name, p in zip(names, result.predictions):
        cells = "  ".join(f"{result.classes[c]:<{nw}} {100 * prob:5.1f}%" for c, prob in p.top(result.top_k))
        lines.append(f"{name:<{fw}}  {cells}".rstrip())
    return "\n".join(lines)
