"""`export`: TorchScript and ONNX files that take uint8 images and match PyTorch, or no file at all.

The run is the synthetic one the analysis tests build (untrained, seeded ResNet-18), with 260 test
images so the parity check's cap of 256 is exercised, and weight-standardized convs, as `--recipe
fast` trains them (the standardization is exported as ops, so both formats compute it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import analysis.model_use.export as export
from analysis.loading import open_run, to_model_input
from analysis.model_use.export import OPSET, PARITY_IMAGES, TOLERANCE, export_model
from cli_model_use import export_command
from common.errors import UserError
from models.loading import load_run_model
from pipeline.cifar_source import CLASSES
from tests.test_analysis import MEAN, STD, make_run, write_test_arrays

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    images, _ = write_test_arrays(base / "data", n=PARITY_IMAGES + 4, seed=3)
    run = make_run(base / "runs" / "r", base / "data", checkpoints=("last",), weight_std=True)
    return run, images


def reference(run, images: np.ndarray) -> np.ndarray:
    model = load_run_model(run, "last")
    with torch.no_grad():
        return model(to_model_input(images, np.array(MEAN, np.float32), np.array(STD, np.float32))).numpy()


def fresh(images: np.ndarray) -> np.ndarray:
    """Images the check did not see (the last four), uint8 NCHW as the exported file takes them."""
    return np.ascontiguousarray(images[PARITY_IMAGES:].transpose(0, 3, 1, 2))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript(setup, tmp_path):
    run, images = setup
    lines: list[str] = []
    result = export_command(run.path, "torchscript", echo=lines.append, err=lines.append)
    assert result.path == run.path / "export" / "last.torchscript.pt" and result.path.is_file()
    assert result.parity.passed and result.parity.images == PARITY_IMAGES
    assert result.parity.max_abs_diff <= TOLERANCE and result.parity.top1_agree == PARITY_IMAGES
    out = "\n".join(lines)
    assert f"{result.size / 1e6:.1f} MB" in out and "parity passed" in out and "uint8 RGB NCHW" in out

    extra = {"classes.txt": ""}
    loaded = torch.jit.load(str(result.path), _extra_files=extra)
    assert json.loads(extra["classes.txt"]) == list(CLASSES)
    x = fresh(images)
    with torch.no_grad():
        got = loaded(torch.from_numpy(x)).numpy()
        one = loaded(torch.from_numpy(x[:1])).numpy()  # any batch size
    want = reference(run, images[PARITY_IMAGES:])
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(one, want[:1], atol=TOLERANCE, rtol=0)


def test_onnx(setup, tmp_path):
    import onnx
    import onnxruntime as ort

    run, images = setup
    path = tmp_path / "model.onnx"
    result = export_model(run.path, "onnx", out=path)
    assert result.path == path and result.opset == OPSET and result.parity.passed
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # weights inside, no .data file, no temp

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] == OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES)
    (inp,) = proto.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = fresh(images)
    want = reference(run, images[PARITY_IMAGES:])
    for batch in (x, x[:1]):
        got = session.run(["logits"], {"images": batch})[0]
        np.testing.assert_allclose(got, want[:len(batch)], atol=TOLERANCE, rtol=0)
        assert (got.argmax(1) == want[:len(batch)].argmax(1)).all()


def test_failed_parity_leaves_no_file(setup, tmp_path, monkeypatch):
    run, _ = setup
    monkeypatch.setattr(export, "PARITY_IMAGES", 8)  # the failure path, not the 256-image pass, is under test
    real = export._run_torchscript
    monkeypatch.setattr(export, "_run_torchscript", lambda path, nchw: real(path, nchw) + 1e-3)
    path = tmp_path / "m.pt"
    with pytest.raises(UserError, match=r"does not match PyTorch \(parity FAILED .*no file was written"):
        export_model(run.path, "torchscript", out=path)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temp file


def test_failed_parity_keeps_an_earlier_export(setup, tmp_path, monkeypatch):
    run, _ = setup
    path = tmp_path / "m.pt"
    path.write_bytes(b"earlier export")
    monkeypatch.setattr(export, "PARITY_IMAGES", 8)
    monkeypatch.setattr(export, "compare", lambda ref, got: export.Parity(len(ref), 1.0, 0))
    with pytest.raises(UserError, match="parity FAILED"):
        export_model(run.path, "torchscript", out=path, force=True)  # force: the bytes stand in for an export
    assert path.read_bytes() == b"earlier export" and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_bad_input(setup, tmp_path):
    run, _ = setup
    with pytest.raises(UserError, match="unknown --format 'tflite'; choose torchscript or onnx"):
        export_model(run.path, "tflite")
    with pytest.raises(UserError, match="is a folder"):
        export_model(run.path, "onnx", out=tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        export_model(tmp_path / "missing", "onnx")
    no_ckpt = make_run(tmp_path / "r", open_run(run.path, "last").data_dir, checkpoints=())
    with pytest.raises(UserError, match="has no last.pt"):
        export_model(no_ckpt.path, "onnx")
    assert not (no_ckpt.path / "export").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_refuses_float_or_misshaped_input(setup, tmp_path):
    """0-1 floats would be read as 0-255 pixels and answered wrongly; the graph says what it takes."""
    run, images = setup
    result = export_model(run.path, "torchscript", which="last", out=tmp_path / "m.torchscript.pt")
    loaded = torch.jit.load(str(result.path))
    x = torch.from_numpy(fresh(images))
    assert loaded(x).shape == (4, len(CLASSES))
    with pytest.raises(Exception, match="expected uint8 RGB images 0-255.*got another dtype"):
        loaded(x.float() / 255)
    with pytest.raises(Exception, match=r"expected uint8 RGB images NCHW \(N, 3, 32, 32\); got shape \[4, 32, 32, 3\]"):
        loaded(x.permute(0, 2, 3, 1).contiguous())


def test_out_never_replaces_a_file_that_is_not_an_export_without_force(setup, tmp_path):
    run, _ = setup
    picture = tmp_path / "figure.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n not a model")
    with pytest.raises(UserError, match="exists and is not a model this toolkit exported.*--force"):
        export_model(run.path, "torchscript", which="last", out=picture)
    assert picture.read_bytes() == b"\x89PNG\r\n\x1a\n not a model"
    ours = tmp_path / "model.onnx"
    export_model(run.path, "onnx", which="last", out=ours)
    assert export.is_toolkit_export(ours) and not export.is_toolkit_export(picture)
    export_model(run.path, "onnx", which="last", out=ours)  # an earlier export is replaced
    export_model(run.path, "torchscript", which="last", out=picture, force=True)
    assert export.is_toolkit_export(picture)
