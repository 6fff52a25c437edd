"""`export`: the run's model as one self-contained file for serving, TorchScript or ONNX.

The exported graph takes **uint8 RGB images, NCHW (N, 3, 32, 32), values 0-255** and returns
**logits (N, classes) float32**: the first ops convert to float and normalise with the mean/std
the run recorded, so a consumer needs no preprocessing constants and cannot get them wrong. (Apply
analysis/model_use/image_files.py's crop/resize rule to other sizes first; softmax the logits for
probabilities.) The batch dimension is dynamic in both formats.

  torchscript   torch.jit.script of the wrapper (scripted, not traced, so no shape is baked in);
                load with torch.jit.load. TorchScript is deprecated upstream since torch 2.10 but
                still the format libtorch (C++) loads.
  onnx          torch.onnx.export with the dynamo exporter (torch 2.14's default; it needs
                onnxscript), opset 18, weights inside the file (no .data side file), input
                "images" uint8 [batch, 3, 32, 32], output "logits"; checked with onnx.checker
                (full_check) and run with onnxruntime's CPU provider.

Every export is verified before it is kept: the file is written to a temp name, loaded back with
its own runtime and run on up to 256 test images of the run's data (test.npz); the reference is the
PyTorch model fed exactly as `evaluate` feeds it (float normalisation outside the model). The check
passes when max |Δlogit| <= 1e-4 (fp32) and the top-1 class is identical for every image;
otherwise the temp file is removed and nothing is left under the final name.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.loading import RunInputs, load_model, load_test_set, open_run, to_model_input
from common.atomic import atomic_path
from common.errors import UserError

FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
OPSET = 18
TOLERANCE = 1e-4
PARITY_IMAGES = 256
EXPORT_DIR = "export"  # default --out folder inside the run: export/<which>.onnx, export/<which>.torchscript.pt
INPUT_NAME, OUTPUT_NAME = "images", "logits"
INPUT_SPEC = "uint8 RGB NCHW (N, 3, 32, 32), values 0-255, N any"

Log = Callable[[str], None]


@dataclass
class Parity:
    images: int
    max_abs_diff: float
    top1_agree: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= TOLERANCE and self.top1_agree == self.images

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"parity {verdict} on {self.images} test images: max |Δlogit| {self.max_abs_diff:.2e} "
                f"(limit {TOLERANCE:.0e}), top-1 identical for {self.top1_agree}/{self.images}")


@dataclass
class ExportResult:
    path: Path
    format: str
    which: str
    run: Path
    size: int  # bytes
    parity: Parity
    opset: int | None
    seconds: float
    classes: list[str]


def normalizing_model(model, mean: np.ndarray, std: np.ndarray):
    """`model` behind a first step that turns uint8 NCHW into the normalised float input."""
    from analysis.model_use.normalized_model import NormalizedModel

    return NormalizedModel(model, mean, std).eval()


def export_model(run_dir: str | Path | None = None, fmt: str = "onnx", which: str = "best",
                 out: str | Path | None = None, data_dir: str | Path | None = None,
                 runs_root: str | Path = "runs", force: bool = False, log: Log = lambda m: None) -> ExportResult:
    """Export, verify against PyTorch on the run's test images, and keep the file only if it passes.
    An existing `out` is replaced only when it is an export of this toolkit, or with `force`."""
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose torchscript or onnx")
    if out is not None and Path(out).is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as model{SUFFIX[fmt]}")
    blocking = next((p for p in Path(out).parents if p.exists() and not p.is_dir()), None) if out is not None else None
    if blocking is not None:  # mkdir would fail with a bare "File exists" / "Not a directory"
        raise UserError(f"--out {out} lies below the file {blocking}, which is not a folder; choose another --out")
    if out is not None and Path(out).exists() and not force and not is_toolkit_export(Path(out)):
        raise UserError(f"--out {out} exists and is not a model this toolkit exported; pass another file name, "
                        "or --force to replace it")
    t0 = time.perf_counter()
    inputs = open_run(run_dir, which, data_dir, runs_root)
    model = load_model(inputs)
    images, _ = load_test_set(inputs)
    if len(images) == 0:
        raise UserError(f"{inputs.data_dir}/test.npz holds no images to check the export on; rebuild it "
                        "with `prepare --force`")
    sample = images[:PARITY_IMAGES]
    log(f"exporting {inputs.which}.pt as {fmt}, then checking it on {len(sample)} test images")
    path = Path(out) if out is not None else inputs.run.path / EXPORT_DIR / f"{inputs.which}{SUFFIX[fmt]}"

    import torch

    with torch.no_grad():
        reference = model(to_model_input(sample, inputs.mean, inputs.std)).float().numpy()
    wrapped = normalizing_model(model, inputs.mean, inputs.std)
    nchw = np.ascontiguousarray(sample.transpose(0, 3, 1, 2))  # uint8, what the exported file takes
    meta = metadata(inputs)

    with atomic_path(path) as tmp:
        if fmt == "torchscript":
            _write_torchscript(wrapped, tmp, meta)
            got = _run_torchscript(tmp, nchw)
            opset = None
        else:
            _write_onnx(wrapped, tmp, meta)
            got = _run_onnx(tmp, nchw)
            opset = OPSET
        parity = compare(reference, got)
        if not parity.passed:
            # Raising inside atomic_path removes the temp file: a failed export leaves nothing.
            raise UserError(f"the exported {fmt} model does not match PyTorch ({parity.describe()}); "
                            "no file was written")
        size = tmp.stat().st_size
    return ExportResult(path, fmt, inputs.which, inputs.run.path, size, parity, opset, time.perf_counter() - t0,
                        inputs.classes)


def is_toolkit_export(path: Path) -> bool:
    """`path` is a TorchScript or ONNX file written by `export_model`: its metadata carries the
    input contract (INPUT_SPEC) that every export of this toolkit records."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):  # TorchScript: a zip with the metadata under <name>/extra/
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("/extra/input.txt")]
                return bool(names) and archive.read(names[0]).decode() == INPUT_SPEC
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return any(p.key == "input" and p.value == INPUT_SPEC for p in proto.metadata_props)
    except Exception:  # noqa: BLE001 - anything unreadable is not one of ours
        return False


def metadata(inputs: RunInputs) -> dict[str, str]:
    """What a consumer needs beside the weights: class names, the input contract, the source run."""
    return {"classes": json.dumps(inputs.classes), "input": INPUT_SPEC, "output": "logits (N, classes) float32",
            "normalisation": json.dumps({"mean": [float(v) for v in inputs.mean],
                                         "std": [float(v) for v in inputs.std], "scale": "0-255"}),
            "run": str(inputs.run.path), "checkpoint": f"{inputs.which}.pt"}


def compare(reference: np.ndarray, got: np.ndarray) -> Parity:
    """Max absolute logit difference and top-1 agreement (the export check's two criteria)."""
    if got.shape != reference.shape:
        return Parity(len(reference), float("inf"), 0)
    diff = float(np.abs(reference.astype(np.float64) - got.astype(np.float64)).max())
    if not np.isfinite(diff):
        diff = float("inf")
    agree = int((reference.argmax(1) == got.argmax(1)).sum())
    return Parity(len(reference), diff, agree)


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """TorchScript calls warn that TorchScript is deprecated; the module docstring says so once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def _write_torchscript(wrapped, path: Path, meta: dict[str, str]) -> None:
    import torch

    with _quiet_jit():
        scripted = torch.jit.script(wrapped)
        with open(path, "wb") as fh:
            torch.jit.save(scripted, fh, _extra_files={f"{k}.txt": v for k, v in meta.items()})


def _run_torchscript(path: Path, nchw: np.ndarray) -> np.ndarray:
    import torch

    with _quiet_jit():
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(torch.from_numpy(nchw)).float().numpy()


def _write_onnx(wrapped, path: Path, meta: dict[str, str]) -> None:
    import io

    import onnx
    import torch

    example = torch.zeros((2, 3, 32, 32), dtype=torch.uint8)
    batch = torch.export.Dim("batch")
    # The dynamo exporter prints progress lines and warnings of its own; keep the command's output
    # to its own one-line report (a failure still raises, with its message).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (example,), str(path), dynamo=True, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes={"images": {0: batch}}, external_data=False, verbose=False)
    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "invalid model"
        raise UserError(f"onnx.checker rejected the exported model ({first}); no file was written") from None
    onnx.save(proto, str(path))


def _run_onnx(path: Path, nchw: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: nchw})[0], dtype=np.float32)
