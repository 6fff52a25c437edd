"""`report`: one self-contained HTML page for a run or a compare folder, checked as text and in a browser.

The run is built like tests/test_analysis.py builds its runs (an untrained ResNet-18, saved
predictions, a small test.npz), plus metrics.csv, summary.json and bench.json as `train` and
`bench` write them; the report itself runs `evaluate` and `explain` for the missing analysis
outputs. The browser test opens the file in headless Chromium (skipped when it is not installed):
every section must be in the DOM and every image must have decoded.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from analysis.report.report import make_report
from cli_analysis import report_command
from common import compare_folder
from common.errors import UserError
from common.records import RunSummary
from common.rundir import RunDir
from pipeline.cifar_source import CLASSES
from tests.test_analysis import fake_probs, make_run, write_test_arrays
from tests.test_structure import assert_stays_clear_of_ffcv_and_training

ROOT = Path(__file__).resolve().parents[1]
RUN_SECTIONS = ("config", "data", "metrics", "evaluation", "explain", "benchmark")
COMPARE_SECTIONS = ("comparison", "settings", "runs")
UNFINISHED = "has not finished an epoch yet; train at least one epoch before making a report"

METRICS = [
    {"epoch": 1, "train_loss": 2.01234, "train_acc": 0.251234, "test_loss": 1.87654, "test_acc": 0.4123,
     "lr": 0.03, "seconds": 61.25, "img_per_s": 812.5},
    {"epoch": 2, "train_loss": 1.61234, "train_acc": 0.401234, "test_loss": 1.45678, "test_acc": 0.5234,
     "lr": 0.03, "seconds": 58.5, "img_per_s": 850.25},
    {"epoch": 3, "train_loss": 1.41234, "train_acc": 0.481234, "test_loss": 1.50001, "test_acc": 0.5012,
     "lr": 0.003, "seconds": 59.0, "img_per_s": 843.75},
]
BENCH = {"benchmark": "train", "device": "CPU, fp32, channels-last", "batch_size": 128, "steps": 6,
         "loader_img_s": 51.4304, "model_only_img_s": 52.0919, "ratio": 0.9873,
         "machine": {"cpu_cores": 2, "python": "3.11.7"}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def finish(run: RunDir, rows=METRICS, status: str = "finished") -> RunDir:
    run.write_metrics(rows)
    best = max(rows, key=lambda r: r["test_acc"])
    run.write_summary(RunSummary.from_dict({"status": status, "epochs_done": len(rows), "epochs": len(rows),
                       "best_acc": best["test_acc"], "best_epoch": best["epoch"], "wall_seconds": 181.5}))
    return run


def write_manifest(folder: Path, n_test: int) -> None:
    per_test = [n_test // 10] * 10
    (folder / "manifest.json").write_text(json.dumps({
        "source": "synthetic", "official": False, "limit": None, "classes": list(CLASSES),
        "splits": {"train": {"count": 5000, "per_class": [500] * 10, "sha256": "a" * 64},
                   "test": {"count": n_test, "per_class": per_test, "sha256": "b" * 64}}}))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report")
    _, labels = write_test_arrays(base / "data", n=40, seed=5)
    write_manifest(base / "data", 40)
    run = make_run(base / "runs" / "r1", base / "data", probs=fake_probs(labels, seed=5), labels=labels)
    finish(run)
    (run.path / "bench.json").write_text(json.dumps(BENCH))
    return base


@pytest.fixture(scope="module")
def built(base):
    """The run's report, made once; it runs evaluate and explain (3 images) for the analysis files."""
    logs: list[str] = []
    result = make_report(base / "runs" / "r1", explain_count=3, log=logs.append)
    return result, result.path.read_text(), logs


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.ids: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "data"):
                self.refs.append((tag, name, value or ""))
            if name == "id" and tag == "section":
                self.ids.append(value)


def parse(text: str) -> _Refs:
    parser = _Refs()
    parser.feed(text)
    return parser


def assert_self_contained(text: str) -> int:
    """No reference leaves the file; every <img> is a data: PNG that decodes. Returns the image count."""
    from PIL import Image

    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "@import" not in text and "url(" not in text
    refs = parse(text).refs
    images = 0
    for tag, attr, value in refs:
        assert not value.startswith(("//", "file:", "http:", "https:", "ftp:")), (tag, attr, value[:80])
        if tag == "img":
            assert attr == "src" and value.startswith("data:image/png;base64,"), value[:80]
            data = base64.b64decode(value.split(",", 1)[1], validate=True)
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
                assert im.format == "PNG" and im.size[0] > 10 and im.size[1] > 10
            images += 1
        elif tag == "a":
            assert value.startswith("#") or "://" not in value, value
        else:
            raise AssertionError(f"unexpected reference {tag} {attr}={value[:80]}")
    return images


# ---- a run -------------------------------------------------------------------------------------

def test_run_report_has_every_section(built):
    result, text, _ = built
    assert result.kind == "run" and result.path == result.folder / "report.html"
    assert result.sections == list(RUN_SECTIONS)
    ids = parse(text).ids
    assert ids == list(RUN_SECTIONS)
    for sid in RUN_SECTIONS:
        start = text.index(f'<section id="{sid}">')
        assert "<h2>" in text[start:start + 80]
        assert f'href="#{sid}"' in text  # table of contents
    assert text.startswith("<!DOCTYPE html>") and 'charset="utf-8"' in text
    assert result.size == len(text.encode())
    assert not [p for p in result.folder.iterdir() if p.name.endswith(".tmp")]  # atomic write left nothing


def test_run_report_shows_the_runs_numbers(built):
    _, text, _ = built
    header = text[text.index("<header"):text.index("</header>")]
    assert "Run r1" in header and "finished" in header and "2, chosen on test" in header  # a --val 0 run
    assert "52.34%" in header  # the test accuracy at that epoch
    assert "3 / 3" in header and "3 min 01.5 s" in header
    metrics = text[text.index('<section id="metrics">'):text.index('<section id="evaluation">')]
    for value in ("2.0123", "25.12%", "1.8765", "41.23%", "52.34%", "50.12%", "0.003", "1.4568", "850.2", "61.2"):
        assert value in metrics, value
    assert '<tr class="best"><td class="num">2</td>' in metrics
    config = text[text.index('<section id="config">'):text.index('<section id="data">')]
    assert "weight_decay" in config and "0.0005" in config and "label_smoothing" in config
    data = text[text.index('<section id="data">'):text.index('<section id="metrics">')]
    assert "125.30, 123.00, 113.90" in data  # train mean from config.json
    assert "5,000" in data and '<td class="num">500</td>' in data  # the data folder's manifest
    evaluation = text[text.index('<section id="evaluation">'):text.index('<section id="explain">')]
    assert "20 of 40 test images correct: 50.00%" in evaluation
    assert all(name in evaluation for name in CLASSES)
    explain = text[text.index('<section id="explain">'):text.index('<section id="benchmark">')]
    assert "layer3[-1] (8×8 map)" in explain and "layer4[-1] (4×4 map)" in explain
    assert "ROAD layer3" in explain and "higher is better" in explain
    bench = text[text.index('<section id="benchmark">'):]
    assert "bench.json: train benchmark" in bench and "loader_img_s" in bench and "51.43" in bench
    assert "machine.cpu_cores" in bench


def test_missing_analysis_outputs_are_made(built):
    result, _, logs = built
    analysis = result.folder / "analysis"
    made = {p.name for p in result.made}
    assert made == {"evaluation.json", "confusion_matrix.png", "misclassified.png", "gradcam_layer3.png",
                    "gradcam_layer3_scores.json", "gradcam_layer4.png", "gradcam_layer4_scores.json"}
    assert all((analysis / name).is_file() for name in made)
    assert any("running evaluate" in m for m in logs) and any("running explain" in m for m in logs)
    assert any("curves.png is missing" in n for n in result.notes)  # redrawn in memory, not written
    assert not (result.folder / "curves.png").exists()


def test_run_report_is_self_contained(built):
    result, text, _ = built
    # curves (redrawn), confusion matrix, gallery, layer 3, layer 4, throughput
    assert assert_self_contained(text) == result.images == 6
    assert "Content-Security-Policy" in text and "default-src &#x27;none&#x27;; img-src data:" in text


def test_text_is_escaped(base, built, tmp_path):
    run = make_run(tmp_path / "esc", base / "data", checkpoints=("last",))
    finish(run)
    shutil.copytree(built[0].folder / "analysis", run.analysis_dir)
    config = run.read_config()
    config["train"]["recipe"] = "<script>alert('x')</script>"
    config["device"] = 'CPU & "quotes"'
    run.write_config(config)
    text = make_report(run.path).path.read_text()
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "CPU &amp; &quot;quotes&quot;" in text
    assert text.count("<script>") == 1  # only the page's own image check


def test_default_is_newest_run_and_out_option(base, built, tmp_path):
    out = tmp_path / "sub" / "page.html"
    result = make_report(None, out=out, runs_root=base / "runs")
    assert result.path == out and out.is_file() and result.folder == base / "runs" / "r1"
    with pytest.raises(UserError, match="is a folder; give a file name"):
        make_report(base / "runs" / "r1", out=tmp_path)


def test_report_without_data_folder_still_written(base, tmp_path):
    run = make_run(tmp_path / "nodata", tmp_path / "gone", checkpoints=("last",))
    finish(run, status="interrupted")
    result = make_report(run.path)
    text = result.path.read_text()
    assert parse(text).ids == list(RUN_SECTIONS)
    assert "status-interrupted" in text
    assert any("per-class accuracy could not be computed" in n and "does not exist" in n for n in result.notes)
    assert any("Grad-CAM could not be computed" in n for n in result.notes)
    assert assert_self_contained(text) == 2  # curves and throughput only


# ---- bad input -----------------------------------------------------------------------------------

def unfinished_runs(base: Path, tmp_path: Path) -> list[Path]:
    no_rows = make_run(tmp_path / "no_rows", base / "data", checkpoints=())
    no_ckpt = finish(make_run(tmp_path / "no_ckpt", base / "data", checkpoints=()))
    return [no_rows.path, no_ckpt.path]


def test_bad_inputs_raise_one_sentence(base, tmp_path):
    cases = [(tmp_path / "missing", "does not exist; pass a run directory"),
             (tmp_path, "is not a run directory (no config.json) nor a compare folder (no compare.json)")]
    (tmp_path / "file.txt").write_text("x")
    cases.append((tmp_path / "file.txt", "is a file, not a run directory"))
    cases += [(p, UNFINISHED) for p in unfinished_runs(base, tmp_path)]
    for path, words in cases:
        with pytest.raises(UserError) as info:
            report_command(path, echo=lambda m: None)
        message = str(info.value)
        assert words in message and "\n" not in message, message
        assert not (Path(path) / "report.html").exists()
    with pytest.raises(UserError, match="no trained run found"):
        make_report(None, runs_root=tmp_path / "empty")


def test_cli_bad_input_is_one_error_line(base, tmp_path):
    bad = [tmp_path / "missing", tmp_path] + unfinished_runs(base, tmp_path)[:1]
    for path in bad:
        proc = subprocess.run([sys.executable, "cli.py", "report", str(path)], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_writes_report_without_ffcv_or_training(built, tmp_path):
    """Through cli.py; and report_command (with analysis files present) never imports FFCV or training/."""
    folder = built[0].folder
    out = tmp_path / "cli.html"
    proc = subprocess.run([sys.executable, "cli.py", "report", str(folder), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote {out}" in proc.stdout and "6 images embedded" in proc.stdout
    assert out.is_file()
    assert_stays_clear_of_ffcv_and_training(
        "from cli_analysis import report_command\nimport analysis.report.report, analysis.inspection.explain, analysis.inspection.evaluate",
        f"report_command({str(folder)!r}, {str(tmp_path / 'x.html')!r}, echo=lambda m: None)")


# ---- a compare folder ------------------------------------------------------------------------------

def small_png(path: Path) -> None:
    from analysis.figures import new_figure, save_figure

    fig = new_figure(4, 2.5)
    ax = fig.add_subplot()
    ax.plot([1, 2, 3], [0.4, 0.5, 0.55], "o-", label="layer")
    ax.plot([1, 2, 3], [0.35, 0.45, 0.5], "o--", label="batch")
    ax.legend()
    save_figure(fig, path)


def make_compare(folder: Path, data_dir: Path, with_outputs: bool = True) -> Path:
    rows = []
    for k, norm in enumerate(("batch", "group", "layer")):
        run = make_run(folder / norm, data_dir, norm=norm, checkpoints=())
        shifted = [{**r, "test_acc": r["test_acc"] + 0.01 * k} for r in METRICS]
        finish(run, shifted)
        best = max(shifted, key=lambda r: r["test_acc"])
        rows.append({"norm": norm, "run": norm, "epochs_done": 3, "best_test_acc": best["test_acc"],
                     "best_epoch": best["epoch"], "final_test_acc": shifted[-1]["test_acc"],
                     "final_train_acc": shifted[-1]["train_acc"], "wall_seconds": 181.5 + k,
                     "img_per_s": 840.0 + k})
    small_png(folder / "layer" / "curves.png")
    (folder / "compare.json").write_text(json.dumps({
        "kind": "compare", "norms": ["batch", "group", "layer"],
        "runs": {"batch": "batch", "group": "group", "layer": str((folder / "layer").resolve())},
        "settings": {"epochs": 3, "lr": 0.03, "subset": 2000}, "created": "2026-11-27T05:00:00"}))
    if with_outputs:
        small_png(folder / "comparison.png")
        (folder / "comparison.json").write_text(json.dumps({"rows": rows}))
    return folder


def test_compare_report(base, tmp_path):
    folder = make_compare(tmp_path / "cmp", base / "data")
    result = make_report(folder)
    text = result.path.read_text()
    assert result.kind == "compare" and result.path == folder / "report.html"
    assert parse(text).ids == list(COMPARE_SECTIONS) == result.sections
    assert assert_self_contained(text) == result.images == 2  # comparison.png + the layer run's curves
    table = text[text.index('<section id="comparison">'):text.index('<section id="settings">')]
    for value in ("batch", "group", "layer", "52.34%", "53.34%", "54.34%", "51.12%", "48.12%", "842.0"):
        assert value in table, value
    assert '<tr class="best"><td>layer</td>' in table
    header = text[text.index("<header"):text.index("</header>")]
    assert "Comparison cmp" in header and "layer · 54.34%" in header
    runs = text[text.index('<section id="runs">'):]
    for norm in ("batch", "group", "layer"):
        assert f'href="{norm}/"' in runs  # relative links to each run, absolute paths included
    assert "python cli.py report" in runs
    assert '"subset"' not in text and "subset" in text[text.index('<section id="settings">'):]


def test_compare_report_rebuilds_a_missing_figure_and_table(base, tmp_path):
    folder = make_compare(tmp_path / "cmp3", base / "data", with_outputs=False)
    assert compare_folder.is_compare_dir(folder)
    result = make_report(folder)
    assert {p.name for p in result.made} == {"comparison.png", "comparison.json"}
    text = result.path.read_text()
    assert assert_self_contained(text) == result.images == 2
    table = text[text.index('<section id="comparison">'):text.index('<section id="settings">')]
    for value in ("52.34%", "53.34%", "54.34%"):
        assert value in table, value


def test_compare_report_over_several_seeds(tmp_path):
    """3 seeds × 2 norms (tests/test_seed_stats.py): the seed summary, the paired differences with
    their verdicts, one row and one card per run, the epoch chosen on validation."""
    from tests.test_seed_stats import make_seeded_compare

    folder = make_seeded_compare(tmp_path / "seeds", extra_runs=True)
    result = make_report(folder)  # comparison.json/.png are made from the runs first
    text = result.path.read_text()
    assert parse(text).ids == list(COMPARE_SECTIONS)
    assert assert_self_contained(text) == result.images == 1
    section = text[text.index('<section id="comparison">'):text.index('<section id="settings">')]
    for value in ("mean ± sd over 3 seeds", "48.00% ± 1.00%", "48.00% ± 1.73%", "1m50.0s ± 10.0s",
                  "batch − layer", "+1.00 pp", "[+0.75, +1.25] pp", "batch &gt; layer",
                  "no difference detected at this budget",
                  "95% t-interval of the mean paired difference over the seeds both norms share",
                  "validation", "chosen on", "first-3 (interrupted)"):
        assert value in section, value
    assert section.count("<td>validation</td>") == 7  # every run's row says which split chose its epoch
    assert '<tr class="best"><td>batch</td><td class="num">3</td>' in section  # highest mean
    header = text[text.index("<header"):text.index("</header>")]
    assert "highest mean" in header and "batch · 50.00%" in header and "0, 1, 2" in header
    runs = text[text.index('<section id="runs">'):]
    for s in (0, 1, 2):
        for norm in ("batch", "layer"):
            assert f'href="{norm}-seed{s}/"' in runs
    assert "51.00% (epoch 3, chosen on validation)" in runs


def test_damaged_compare_json(tmp_path):
    (tmp_path / "compare.json").write_text("{not json")
    with pytest.raises(UserError, match="compare.json is not valid JSON"):
        make_report(tmp_path)


# ---- in a real browser ----------------------------------------------------------------------------

def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it when run as root)")
    return exe


def browse(exe: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=5000", *args, page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.parametrize("kind", ["run", "compare"])
def test_report_in_headless_chromium(kind, built, base, tmp_path):
    from PIL import Image

    exe = chromium()
    sections: tuple[str, ...]
    if kind == "run":
        page, sections, images = built[0].path, RUN_SECTIONS, built[0].images
    else:
        result = make_report(make_compare(tmp_path / "cmp", base / "data"))
        page, sections, images = result.path, COMPARE_SECTIONS, result.images
    dom = browse(exe, page, tmp_path / "profile-dom", "--dump-dom").stdout
    for sid in sections:
        assert f'<section id="{sid}">' in dom, sid
    # The page's inline script counted the images that decoded (naturalWidth > 0) after `load`.
    assert f'data-images-ok="{images}/{images}"' in dom

    shot = tmp_path / "shot.png"
    browse(exe, page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2400",
           "--hide-scrollbars")
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1280, 2400)
        rgb = np.asarray(im.convert("RGB"))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50  # text, tables and figures, not a blank page
    assert rgb[:60].mean() < 100  # the dark header band is drawn
