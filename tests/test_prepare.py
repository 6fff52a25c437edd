"""`pipeline.prepare.prepare` and `python cli.py prepare`: round-trip, manifest, limit,
idempotence, official detection, and every bad input failing cleanly without touching outputs.

Everything runs on small synthetic CIFAR-10 (tests/synth.py) except the one `needs_shared`
integration test, which prepares the shared 50k/10k archive through the CLI.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from pipeline import cifar_source
from pipeline import manifest as manifest_mod
from pipeline.prepare import prepare
from tests import synth
from tests.conftest import N_TEST, N_TRAIN, SHARED_ARCHIVE, needs_shared

ROOT = Path(__file__).resolve().parents[1]
# prepare also writes plain-numpy copies of both splits (pipeline.manifest.ARRAYS).
TEST_ARRAYS = manifest_mod.TEST_ARRAYS
FINAL_NAMES = ("train.beton", "test.beton", "manifest.json", "train.npz", "test.npz", ".readers.lock")
QUIET = {"log": lambda m: None}


# ----------------------------------------------------------------------------- helpers


def read_beton(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All (images HWC uint8, labels int64) of a beton, in stored order, straight from the file.

    Uses FFCV's Reader for the header/metadata and reads each raw image at its data pointer, so
    it checks the bytes on disk without any decoding pipeline in between.
    """
    from ffcv.reader import Reader

    reader = Reader(str(path))
    assert reader.field_names == ["image", "label"]
    # The metadata record's columns are unnamed (f0, f1, ...) in field order.
    image_meta, label_meta = reader.metadata["f0"], reader.metadata["f1"]
    raw = np.fromfile(path, dtype=np.uint8)
    n = int(reader.num_samples)
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        field = image_meta[i]
        assert field["mode"] == 1, "expected raw (not JPEG) storage"
        h, w = int(field["height"]), int(field["width"])
        assert (h, w) == (32, 32)
        ptr = int(field["data_ptr"])
        images[i] = raw[ptr:ptr + h * w * 3].reshape(h, w, 3)
    return images, np.asarray(label_meta, dtype=np.int64)


def snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    """relative path → (sha256, mtime_ns, inode) for every file (hidden ones included)."""
    out = {}
    if not folder.exists():
        return out
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(folder))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                               st.st_mtime_ns, st.st_ino)
    return out


def assert_no_outputs(folder: Path) -> None:
    """Nothing under a final name and no temp leftovers (the folder may not even exist)."""
    if folder.exists():
        assert sorted(p.name for p in folder.iterdir()) == [], f"{folder} was written to"


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    env["NO_COLOR"] = "1"
    return subprocess.run([sys.executable, "cli.py", "prepare", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str, one_line: bool = True) -> str:
    """Non-zero exit, no traceback, and on stderr exactly one line, starting with "error:"
    (informational "notice:" lines printed before the failure are allowed)."""
    assert proc.returncode != 0, proc
    combined = proc.stdout + proc.stderr
    assert "Traceback" not in combined, combined
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("notice:")]
    assert lines, proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    if one_line:
        assert len(lines) == 1, f"expected exactly one error line on stderr, got: {proc.stderr!r}"
    assert sum(line.startswith("error:") for line in lines) == 1, proc.stderr
    message = " ".join(lines)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    return lines[0]


def members_md5(archive: Path) -> dict[str, str]:
    with tarfile.open(archive) as tar:
        return {m.name.rsplit("/", 1)[-1]: hashlib.md5(tar.extractfile(m).read()).hexdigest()
                for m in tar if m.isfile()}


def pickled(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def bad_batch(data: np.ndarray, labels) -> bytes:
    return pickled({b"batch_label": b"x", b"labels": list(labels), b"data": data})


class _RunsShell:
    """Pickles to `os.system(cmd)`: a crafted batch that would run code when unpickled."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def synth_members(synth_splits) -> dict[str, bytes]:
    return synth.make_members(train=synth_splits["train"], test=synth_splits["test"])


@pytest.fixture()
def guarded(tmp_path, prepared_dir) -> tuple[Path, dict]:
    """A copy of a valid prepared folder, and its snapshot, that a failing run must not touch."""
    out = tmp_path / "existing"
    shutil.copytree(prepared_dir, out)
    return out, snapshot(out)


@pytest.fixture(scope="module")
def full_size_zero_archive(tmp_path_factory) -> Path:
    """50,000/10,000 mostly-black images: passes the CLI's count check, compresses fast."""
    def split(n):
        images = np.zeros((n, 32, 32, 3), dtype=np.uint8)
        labels = np.arange(n) % 10
        images[:, 0, 0, 0] = labels * 25
        return images, labels

    members = synth.make_members(train=split(50_000), test=split(10_000))
    path = tmp_path_factory.mktemp("full") / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


# ----------------------------------------------------------------------------- round trip


def _check_roundtrip(out: Path, splits) -> None:
    for name in ("train", "test"):
        images, labels = read_beton(out / f"{name}.beton")
        want_images, want_labels = splits[name]
        assert images.shape == want_images.shape
        assert np.array_equal(labels, want_labels), name
        assert np.array_equal(images, want_images), name  # bit-for-bit, same order
    images, labels = manifest_mod.read_test_arrays(out)
    assert images.dtype == np.uint8
    assert np.array_equal(images, splits["test"][0])
    assert np.array_equal(labels, splits["test"][1])
    manifest = manifest_mod.read_manifest(out)
    for name in ("train", "test"):
        images, labels = manifest_mod.read_arrays(out, name, manifest)
        assert np.array_equal(images, splits[name][0]) and np.array_equal(labels, splits[name][1]), name


def test_roundtrip_from_archive(prepared_dir, synth_splits):
    _check_roundtrip(prepared_dir, synth_splits)


@pytest.mark.parametrize("point_at", ["batches_folder", "parent_folder"])
def test_roundtrip_from_extracted_folder(tmp_path, synth_members, synth_splits, point_at):
    folder = synth.write_folder(tmp_path / "src", synth_members)
    source = folder if point_at == "batches_folder" else folder.parent
    out = tmp_path / "out"
    result = prepare(str(source), out, check_counts=False, **QUIET)
    assert not result.skipped
    _check_roundtrip(out, synth_splits)
    assert result.manifest == json.loads((out / "manifest.json").read_text())


def test_roundtrip_through_ffcv_loader(prepared_dir, synth_splits):
    """The same bytes come back through an FFCV Loader (SEQUENTIAL, one batch of everything)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    for name in ("train", "test"):
        want_images, want_labels = synth_splits[name]
        n = len(want_labels)
        loader = Loader(str(prepared_dir / f"{name}.beton"), batch_size=n, num_workers=1,
                        order=OrderOption.SEQUENTIAL, drop_last=False,
                        pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
        batches = [(np.array(img), np.array(lab)) for img, lab in loader]
        assert len(batches) == 1
        images, labels = batches[0]
        assert np.array_equal(images, want_images), name
        assert np.array_equal(labels.reshape(-1), want_labels), name


# ----------------------------------------------------------------------------- manifest


def test_manifest_contents(prepared_dir, synth_splits, synth_archive):
    m = json.loads((prepared_dir / "manifest.json").read_text())
    assert m["official"] is False
    assert m["limit"] is None
    assert m["source"] == str(synth_archive)
    assert m["classes"] == list(cifar_source.CLASSES)
    assert m["image_shape"] == [32, 32, 3]
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        info = m["splits"][name]
        labels = synth_splits[name][1]
        path = prepared_dir / f"{name}.beton"
        assert info["count"] == n == len(labels)
        assert info["per_class"] == np.bincount(labels, minlength=10).tolist()
        assert sum(info["per_class"]) == n
        assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert info["bytes"] == path.stat().st_size
        arrays = prepared_dir / f"{name}.npz"
        assert info["arrays"] == {"file": f"{name}.npz", "bytes": arrays.stat().st_size,
                                  "sha256": hashlib.sha256(arrays.read_bytes()).hexdigest()}
    assert m["source_kind"] == "cifar10-python"
    assert m["betons"] == ["train", "test"]
    assert m["test_arrays"]["sha256"] == m["splits"]["test"]["arrays"]["sha256"]
    assert manifest_mod.split_digests(m) == {s: m["splits"][s]["arrays"]["sha256"] for s in ("train", "test")}
    pixels = synth_splits["train"][0].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(m["train_mean"], pixels.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(m["train_std"], pixels.std(axis=0), rtol=0, atol=1e-6)


def test_no_temp_files_left(prepared_dir):
    assert sorted(p.name for p in prepared_dir.iterdir()) == sorted(FINAL_NAMES)


# ----------------------------------------------------------------------------- limit


@pytest.mark.parametrize("limit", [7, 150])
def test_limit_writes_first_n_of_each_split(tmp_path, synth_archive, synth_splits, limit):
    out = tmp_path / "out"
    m = prepare(str(synth_archive), out, limit=limit, check_counts=False, **QUIET).manifest
    assert m["limit"] == limit
    assert json.loads((out / "manifest.json").read_text())["limit"] == limit
    first_n = {name: (images[:limit], labels[:limit]) for name, (images, labels) in synth_splits.items()}
    for name in ("train", "test"):
        want_labels = first_n[name][1]
        assert m["splits"][name]["count"] == len(want_labels) == min(limit, len(synth_splits[name][1]))
        assert m["splits"][name]["per_class"] == np.bincount(want_labels, minlength=10).tolist()
    _check_roundtrip(out, first_n)
    pixels = synth_splits["train"][0][:limit].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(m["train_mean"], pixels.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(m["train_std"], pixels.std(axis=0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_must_be_positive(tmp_path, synth_archive, limit):
    with pytest.raises(UserError, match="--limit"):
        prepare(str(synth_archive), tmp_path / "out", limit=limit, check_counts=False, **QUIET)
    assert_no_outputs(tmp_path / "out")


# ----------------------------------------------------------------------------- idempotence


def test_second_prepare_skips_and_force_rewrites(tmp_path, synth_archive, synth_splits):
    out = tmp_path / "out"
    first = prepare(str(synth_archive), out, check_counts=False, **QUIET)
    assert not first.skipped
    before = snapshot(out)

    second = prepare(str(synth_archive), out, check_counts=False, **QUIET)
    assert second.skipped
    assert second.manifest == first.manifest
    assert snapshot(out) == before  # same bytes, same mtimes, same inodes

    forced = prepare(str(synth_archive), out, force=True, check_counts=False, **QUIET)
    assert not forced.skipped
    after = snapshot(out)
    assert sorted(after) == sorted(before) == sorted(FINAL_NAMES)
    for name in FINAL_NAMES:  # each file was replaced by a new one
        assert after[name][2] != before[name][2] or after[name][1] != before[name][1], name
    _check_roundtrip(out, synth_splits)
    for name in ("train", "test"):
        assert forced.manifest["splits"][name]["sha256"] == after[f"{name}.beton"][0]


def test_damaged_beton_is_rebuilt(tmp_path, synth_archive, synth_splits):
    out = tmp_path / "out"
    prepare(str(synth_archive), out, check_counts=False, **QUIET)
    with open(out / "test.beton", "r+b") as fh:  # same size, different bytes
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 0xFF]))
    result = prepare(str(synth_archive), out, check_counts=False, **QUIET)
    assert not result.skipped
    _check_roundtrip(out, synth_splits)


@pytest.mark.parametrize("damage", ["train.npz", "test.npz", "legacy_manifest"])
def test_damaged_or_missing_arrays_are_rebuilt(tmp_path, synth_archive, synth_splits, damage):
    """A changed .npz, or a folder prepared before train.npz existed (its manifest lacks the
    per-split "arrays" records), is rewritten by a plain prepare: no --force needed."""
    out = tmp_path / "out"
    prepare(str(synth_archive), out, check_counts=False, **QUIET)
    if damage == "legacy_manifest":
        m = json.loads((out / "manifest.json").read_text())
        for info in m["splits"].values():
            del info["arrays"]
        del m["betons"], m["source_kind"]
        (out / "manifest.json").write_text(json.dumps(m))
        (out / "train.npz").unlink()
        assert manifest_mod.has_betons(m)  # read as a manifest with both betons
        with pytest.raises(UserError, match="prepared before train.npz existed.*--force"):
            manifest_mod.read_arrays(out, "train", m)
    else:
        with open(out / damage, "r+b") as fh:
            fh.seek(-1, os.SEEK_END)
            last = fh.read(1)
            fh.seek(-1, os.SEEK_END)
            fh.write(bytes([last[0] ^ 0xFF]))
        with pytest.raises(UserError, match=f"{damage} is not the file prepare wrote.*--force"):
            manifest_mod.read_arrays(out, damage.split(".")[0], manifest_mod.read_manifest(out))
    result = prepare(str(synth_archive), out, check_counts=False, **QUIET)
    assert not result.skipped
    _check_roundtrip(out, synth_splits)


def test_cli_second_run_says_nothing_to_do(tmp_path, synth_archive):
    out = tmp_path / "out"
    prepare(str(synth_archive), out, check_counts=False, **QUIET)
    before = snapshot(out)
    proc = run_cli("--source", str(synth_archive), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert snapshot(out) == before


def test_cli_other_limit_without_force_is_refused(guarded, synth_archive):
    out, before = guarded
    proc = run_cli("--source", str(synth_archive), "--out", str(out), "--limit", "10")
    assert_clean_error(proc, "limit")
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- official detection


def test_official_when_member_md5s_match(tmp_path, monkeypatch, synth_archive, synth_members):
    md5s = members_md5(synth_archive)
    monkeypatch.setattr(cifar_source, "MEMBER_MD5",
                        {name: md5s[name] for name in cifar_source.MEMBER_MD5})
    m = prepare(str(synth_archive), tmp_path / "a", check_counts=False, **QUIET).manifest
    assert m["official"] is True
    folder = synth.write_folder(tmp_path / "src", synth_members)
    m = prepare(str(folder), tmp_path / "b", check_counts=False, **QUIET).manifest
    assert m["official"] is True


def test_not_official_when_one_member_differs(tmp_path, monkeypatch, synth_archive):
    md5s = members_md5(synth_archive)
    fake = {name: md5s[name] for name in cifar_source.MEMBER_MD5}
    fake["test_batch"] = "0" * 32
    monkeypatch.setattr(cifar_source, "MEMBER_MD5", fake)
    logs: list[str] = []
    m = prepare(str(synth_archive), tmp_path / "a", check_counts=False, log=logs.append).manifest
    assert m["official"] is False
    assert any("not the official" in line for line in logs)


# ----------------------------------------------------------------------------- bad inputs


def _archive(path: Path, members: dict[str, bytes], folder: str = "cifar-10-batches-py") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return synth.write_archive(path, members, folder=folder)


def _with(members: dict[str, bytes], **replace: bytes) -> dict[str, bytes]:
    return {**members, **replace}


def _labels_bad(synth_splits, value: int) -> dict[str, bytes]:
    images, labels = synth_splits["train"]
    labels = labels.copy()
    labels[3] = value
    return synth.make_members(train=(images, labels), test=synth_splits["test"])


def make_bad_source(case: str, tmp: Path, synth_archive: Path, synth_members, synth_splits) -> Path:
    src = tmp / "src"
    src.mkdir(parents=True, exist_ok=True)
    if case == "missing":
        return src / "no-such-archive.tar.gz"
    if case == "truncated":
        raw = synth_archive.read_bytes()
        (src / "half.tar.gz").write_bytes(raw[: len(raw) // 2])
        return src / "half.tar.gz"
    if case == "random_bytes":
        (src / "noise.tar.gz").write_bytes(np.random.default_rng(3).bytes(20_000))
        return src / "noise.tar.gz"
    if case == "text_file":
        (src / "notes.tar.gz").write_text("this is not an archive\n" * 50)
        return src / "notes.tar.gz"
    if case == "gzip_not_tar":
        (src / "plain.tar.gz").write_bytes(gzip.compress(b"hello, not a tar\n" * 100))
        return src / "plain.tar.gz"
    if case == "no_test_batch":
        members = {k: v for k, v in synth_members.items() if k != "test_batch"}
        return _archive(src / "a.tar.gz", members)
    if case == "cifar100_archive":
        def c100(n):
            return pickled({b"filenames": [b"x"] * n, b"batch_label": b"t",
                            b"fine_labels": list(range(n)), b"coarse_labels": [i % 20 for i in range(n)],
                            b"data": np.zeros((n, 3072), np.uint8)})
        members = {"train": c100(100), "test": c100(20),
                   "meta": pickled({b"fine_label_names": [b"apple"], b"coarse_label_names": [b"fruit"]})}
        return _archive(src / "cifar-100-python.tar.gz", members, folder="cifar-100-python")
    if case == "cifar100_folder":
        folder = src / "cifar-100-python"
        folder.mkdir()
        for name in ("train", "test", "meta"):
            (folder / name).write_bytes(pickled({b"fine_labels": [1], b"coarse_labels": [1],
                                                 b"data": np.zeros((1, 3072), np.uint8)}))
        return folder
    if case == "cifar100_labels_in_cifar10_layout":
        fake = pickled({b"fine_labels": [1] * 10, b"coarse_labels": [1] * 10,
                        b"data": np.zeros((10, 3072), np.uint8)})
        return _archive(src / "a.tar.gz", _with(synth_members, data_batch_1=fake))
    if case == "wrong_count":  # a valid layout, but the CLI insists on 50,000 / 10,000
        return synth_archive
    if case == "wrong_shape":
        labels = [i % 10 for i in range(100)]
        return _archive(src / "a.tar.gz", _with(synth_members, data_batch_2=bad_batch(
            np.zeros((100, 3000), np.uint8), labels)))
    if case == "wrong_dtype":
        labels = [i % 10 for i in range(100)]
        return _archive(src / "a.tar.gz", _with(synth_members, data_batch_2=bad_batch(
            np.zeros((100, 3072), np.float32), labels)))
    if case == "label_count_mismatch":
        return _archive(src / "a.tar.gz", _with(synth_members, test_batch=bad_batch(
            np.zeros((100, 3072), np.uint8), [i % 10 for i in range(99)])))
    if case == "label_10":
        return _archive(src / "a.tar.gz", _labels_bad(synth_splits, 10))
    if case == "label_minus_1":
        return _archive(src / "a.tar.gz", _labels_bad(synth_splits, -1))
    if case == "missing_class":
        images, labels = synth_splits["test"]
        labels = np.where(labels == 9, 8, labels)
        return _archive(src / "a.tar.gz", synth.make_members(train=synth_splits["train"],
                                                             test=(images, labels)))
    if case == "not_a_dict":
        return _archive(src / "a.tar.gz", _with(synth_members, data_batch_1=pickled([1, 2, 3])))
    if case == "garbage_pickle":
        return _archive(src / "a.tar.gz", _with(synth_members, data_batch_3=b"\x80\x02garbage"))
    if case == "folder_missing_batch":
        folder = synth.write_folder(src, synth_members)
        (folder / "data_batch_4").unlink()
        return folder
    raise AssertionError(case)


BAD_CASES = {  # case → a fragment the one-line error must contain
    "missing": "does not exist",
    "truncated": "truncated",
    "random_bytes": "not a readable",
    "text_file": "not a readable",
    "gzip_not_tar": "not a readable",
    "no_test_batch": "test_batch",
    "cifar100_archive": "CIFAR-100",
    "cifar100_folder": "CIFAR-100",
    "cifar100_labels_in_cifar10_layout": "CIFAR-100",
    "wrong_count": "50000",
    "wrong_shape": "3072",
    "wrong_dtype": "3072",
    "label_count_mismatch": "labels",
    "label_10": "outside 0-9",
    "label_minus_1": "outside 0-9",
    "missing_class": "truck",
    "not_a_dict": "dict",
    "garbage_pickle": "not a readable",
    "folder_missing_batch": "data_batch_4",
}


# The CLI checks the 50,000/10,000 counts before the per-class check, so a missing class in the
# small synthetic data is only reachable in-process.
CLI_CASES = sorted(set(BAD_CASES) - {"missing_class"})


@pytest.fixture(scope="module")
def cli_bad_runs(tmp_path_factory, prepared_dir, synth_archive, synth_members, synth_splits):
    """Run `cli.py prepare --force` on every bad source, a few processes at a time (each run is
    mostly interpreter start-up), each against its own copy of a valid prepared folder.

    case → (CompletedProcess, out folder, snapshot of the folder before the run)
    """
    jobs = {}
    for case in CLI_CASES:
        base = tmp_path_factory.mktemp(f"bad-{case}")
        source = make_bad_source(case, base, synth_archive, synth_members, synth_splits)
        out = base / "existing"
        shutil.copytree(prepared_dir, out)
        jobs[case] = (source, out, snapshot(out))

    def run(case):
        source, out, _ = jobs[case]
        # --force: even a run told to replace valid data must leave it alone on bad input.
        return run_cli("--source", str(source), "--out", str(out), "--force")

    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = dict(zip(CLI_CASES, pool.map(run, CLI_CASES)))
    return {case: (procs[case], jobs[case][1], jobs[case][2]) for case in CLI_CASES}


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_bad_input_fails_cleanly_and_keeps_existing_output(case, cli_bad_runs):
    proc, out, before = cli_bad_runs[case]
    assert_clean_error(proc, BAD_CASES[case], one_line=True)
    assert snapshot(out) == before


@pytest.mark.parametrize("case", sorted(set(BAD_CASES) - {"wrong_count"}))
def test_bad_input_in_process_writes_nothing(case, tmp_path, synth_archive, synth_members, synth_splits):
    source = make_bad_source(case, tmp_path, synth_archive, synth_members, synth_splits)
    out = tmp_path / "fresh-out"
    with pytest.raises(UserError):
        prepare(str(source), out, check_counts=False, **QUIET)
    assert_no_outputs(out)


def test_wrong_count_in_process_with_counts_checked(tmp_path, synth_archive):
    with pytest.raises(UserError, match="CIFAR-10 has 50000"):
        prepare(str(synth_archive), tmp_path / "out", **QUIET)
    assert_no_outputs(tmp_path / "out")


def test_forbidden_global_is_rejected_and_not_executed(tmp_path, guarded, synth_members):
    marker = tmp_path / "pwned"
    evil = pickled({b"data": _RunsShell(f"touch {marker}"), b"labels": [0]})
    assert b"system" in evil  # really references os.system
    control = tmp_path / "control"  # ...and a plain unpickler would really run it
    pickle.loads(pickled(_RunsShell(f"touch {control}")))
    assert control.exists()
    source = _archive(tmp_path / "src" / "evil.tar.gz", _with(synth_members, data_batch_1=evil))
    out, before = guarded
    proc = run_cli("--source", str(source), "--out", str(out), "--force")
    assert_clean_error(proc, "forbidden")
    assert not marker.exists(), "the pickle's payload ran"
    assert snapshot(out) == before

    with pytest.raises(UserError, match="forbidden"):
        prepare(str(source), tmp_path / "fresh", check_counts=False, **QUIET)
    assert not marker.exists(), "the pickle's payload ran"
    assert_no_outputs(tmp_path / "fresh")


def test_forbidden_global_in_extracted_folder(tmp_path, synth_members):
    marker = tmp_path / "pwned"
    evil = pickled(_RunsShell(f"touch {marker}"))
    folder = synth.write_folder(tmp_path / "src", _with(synth_members, test_batch=evil))
    with pytest.raises(UserError, match="forbidden"):
        prepare(str(folder), tmp_path / "out", check_counts=False, **QUIET)
    assert not marker.exists()
    assert_no_outputs(tmp_path / "out")


# ----------------------------------------------------------------------------- unwritable output


def test_cli_out_is_a_file(tmp_path, synth_archive):
    target = tmp_path / "a-file"
    target.write_text("keep me\n")
    proc = run_cli("--source", str(synth_archive), "--out", str(target))
    assert_clean_error(proc, "is a file")
    assert target.read_text() == "keep me\n"


def test_out_below_a_file_in_process(tmp_path, synth_archive):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me\n")
    with pytest.raises(UserError, match="cannot create output folder"):
        prepare(str(synth_archive), blocker / "data", check_counts=False, **QUIET)
    assert blocker.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_cli_out_below_a_file(tmp_path, full_size_zero_archive):
    """Unwritable even for root: the --out folder would have to live inside a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me\n")
    proc = run_cli("--source", str(full_size_zero_archive), "--out", str(blocker / "data"))
    assert_clean_error(proc, "cannot create output folder")
    assert blocker.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


# ----------------------------------------------------------------------------- interrupted writes


class _Boom(RuntimeError):
    pass


def _interrupting_writer(monkeypatch, fail_on_call: int, exc: BaseException):
    """Make FFCV's writer put some bytes in its file, then raise, on the N-th beton."""
    from ffcv.writer import DatasetWriter

    real = DatasetWriter.from_indexed_dataset
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            with open(self.fname, "wb") as fh:
                fh.write(b"\x00half-written beton" * 1000)
            raise exc
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "from_indexed_dataset", flaky)
    return calls


TRAIN, TEST = 1, 2  # which call to the FFCV writer fails: train.beton is written first

@pytest.mark.parametrize("exc", [KeyboardInterrupt(), _Boom("disk on fire")], ids=["ctrl-c", "error"])
@pytest.mark.parametrize("fail_on", [
    pytest.param(TRAIN, id="train"),
    pytest.param(TEST, id="test"),
])
def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, synth_archive, exc, fail_on):
    out = tmp_path / "out"
    calls = _interrupting_writer(monkeypatch, fail_on, exc)
    with pytest.raises(type(exc)):
        prepare(str(synth_archive), out, check_counts=False, **QUIET)
    assert calls["n"] == fail_on
    assert_no_outputs(out)


@pytest.fixture()
def other_guarded(tmp_path) -> tuple[Path, dict]:
    """A valid prepared folder whose files all differ from what the synthetic archive gives."""
    other = synth.write_archive(tmp_path / "other.tar.gz", synth.make_members(n_train=200, n_test=50, seed=7))
    out = tmp_path / "existing-other"
    prepare(str(other), out, check_counts=False, **QUIET)
    return out, snapshot(out)


def _interrupt_forced_prepare(monkeypatch, synth_archive, out: Path, fail_on: int) -> None:
    calls = _interrupting_writer(monkeypatch, fail_on, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        prepare(str(synth_archive), out, force=True, check_counts=False, **QUIET)
    assert calls["n"] == fail_on
    monkeypatch.undo()


@pytest.mark.parametrize("fail_on", [
    pytest.param(TRAIN, id="train"),
    pytest.param(TEST, id="test"),
])
def test_interrupted_forced_write_keeps_existing_output(monkeypatch, synth_archive, other_guarded, fail_on):
    out, before = other_guarded
    _interrupt_forced_prepare(monkeypatch, synth_archive, out, fail_on)
    assert snapshot(out) == before


@pytest.mark.parametrize("fail_on", [TRAIN, TEST], ids=["train", "test"])
def test_interrupted_forced_write_is_never_mistaken_for_valid(monkeypatch, synth_archive, synth_splits,
                                                                other_guarded, fail_on):
    """No temp files remain, the manifest still matches the betons beside it (the other source's
    data is intact), a plain prepare of the new source refuses to replace it, a forced one does."""
    out, _ = other_guarded
    _interrupt_forced_prepare(monkeypatch, synth_archive, out, fail_on)
    assert not [p.name for p in out.iterdir() if p.name not in FINAL_NAMES], "temp files left"
    try:
        manifest = manifest_mod.read_manifest(out)
    except UserError:
        pass  # reads as unprepared: consumers are told to run prepare
    else:
        assert manifest_mod.verify_betons(out, manifest) == [], "manifest describes other betons"
    with pytest.raises(UserError, match="--force"):  # still the other source's valid data
        prepare(str(synth_archive), out, check_counts=False, **QUIET)
    result = prepare(str(synth_archive), out, force=True, check_counts=False, **QUIET)
    assert not result.skipped
    _check_roundtrip(out, synth_splits)


@pytest.mark.parametrize("stale", [
    ".train.beton.abc123.tmp",
    ".test.beton.x_9.tmp",
    ".test.npz.abc123.tmp",
    ".train.npz.abc123.tmp",
    ".manifest.json.abc123.tmp",
])
def test_stale_temp_files_are_removed(tmp_path, synth_archive, stale):
    """Temp files (named like common.atomic's mkstemp ones) left by a SIGKILLed prepare."""
    out = tmp_path / "out"
    out.mkdir()
    (out / stale).write_bytes(b"left by a SIGKILLed prepare")
    prepare(str(synth_archive), out, check_counts=False, **QUIET)
    assert sorted(p.name for p in out.iterdir()) == sorted(FINAL_NAMES)


# ----------------------------------------------------------------------------- integration


@needs_shared
def test_cli_prepares_shared_archive(tmp_path):
    out = tmp_path / "data"
    proc = run_cli("--source", str(SHARED_ARCHIVE), "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "train 50,000" in proc.stdout and "test 10,000" in proc.stdout
    assert "non-official" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["official"] is False
    assert m["limit"] is None
    assert m["splits"]["train"]["count"] == 50_000
    assert m["splits"]["test"]["count"] == 10_000
    assert m["splits"]["train"]["per_class"] == [5_000] * 10
    assert m["splits"]["test"]["per_class"] == [1_000] * 10
    for name in ("train", "test"):
        path = out / f"{name}.beton"
        assert m["splits"][name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == sorted(FINAL_NAMES)
    assert all(40 < v < 140 for v in m["train_mean"]) and all(40 < v < 90 for v in m["train_std"])
