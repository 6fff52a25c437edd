"""The docs cite tests that exist, the studies' figures regenerate, and the docs' links resolve: every `tests/FILE.py::test_name` in docs/RELIABILITY.md names a
test function in that file (a renamed test would otherwise leave the table pointing at nothing)."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """A file under scripts/ as a module (scripts/ is no package: they run as files)."""
    path = ROOT / "scripts" / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reliability_table_cites_existing_tests():
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    cited = set(re.findall(r"tests/(\w+\.py)::(\w+)", text))
    assert len(cited) > 50
    missing = [f"{f}::{name}" for f, name in sorted(cited)
               if not re.search(rf"^def {name}\(", (ROOT / "tests" / f).read_text(), re.M)]
    assert not missing, f"docs/RELIABILITY.md cites tests that do not exist: {missing}"


def test_beside_original_figure_is_drawn_from_runs_metrics_with_minutes(tmp_path):
    """The time-to-accuracy figure (README, docs/STUDIES.md) regenerates from runs' metrics.csv: minutes
    come from the run's cumulative wall_seconds, or, for runs older than that column, from the summed
    per-epoch seconds; epochs whose test set was not scored read as NaN and are left out of the test
    line; a folder without metrics.csv gets the usage line, not a traceback."""
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    old.mkdir()
    (new / "metrics.csv").write_text("epoch,train_loss,train_acc,test_loss,test_acc,lr,seconds,img_per_s,val_loss,val_acc,wall_seconds\n"
                                     "1,2.0,0.30,1.8,0.35,0.001,290,180,,,300\n2,1.7,0.45,1.4,0.47,0.07,280,185,,,600\n"
                                     "3,1.5,0.50,,,0.05,280,185,,,900\n")  # epoch 3 not scored (--test-every needed)
    (old / "metrics.csv").write_text("epoch,train_loss,train_acc,test_loss,test_acc,lr,seconds,img_per_s,val_loss,val_acc\n"
                                     "1,2.3,0.26,1.7,0.37,0.03,300,200,,\n2,1.5,0.43,1.4,0.48,0.03,300,200,,\n")
    module = load_script("beside_original.py")
    epochs, test, train, minutes = module.read_curve(new)
    assert (epochs, test[:2], train, minutes) == ([1, 2, 3], [35.0, 47.0], [30.0, 45.0, 50.0], [5.0, 10.0, 15.0])
    assert math.isnan(test[2])
    assert module.read_curve(old)[3] == [5.0, 10.0]
    # the accuracy a run reports with its TTA is drawn where it was scored; older runs have no column
    tta = tmp_path / "tta"
    tta.mkdir()
    (tta / "metrics.csv").write_text((new / "metrics.csv").read_text().replace("wall_seconds\n", "wall_seconds,test_acc_tta\n", 1)
                                     .replace(",,,900\n", ",,,900,0.52\n"))
    assert module.tta_points(tta) == ([3], [52.0], [15.0])
    assert module.tta_points(old) == ([], [], [])
    out = tmp_path / "fig" / "tta.png"
    proc = subprocess.run([sys.executable, "scripts/beside_original.py", str(out), str(new), str(old), str(tta)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob("*.tmp.png")) and not list(out.parent.glob(".*.tmp"))  # written atomically
    proc = subprocess.run([sys.executable, "scripts/beside_original.py", str(out), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("usage:")
    # --lengths: one recipe at several lengths, one point per run (its last epoch's test accuracy)
    assert module.final_point(old) == (2, 48.0)
    with pytest.raises(UserError, match="no test accuracy at its last epoch"):
        module.final_point(new)  # its last epoch was not scored
    module.main(out, [old], [old, old])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Legends tell the recipe's two eras apart: its runs with plain convs and with weight-standardized ones.
    records = ROOT / "docs" / "run_records" / "cpu-xeon-2026-12-04"
    assert module.label_of(records / "fast-ws-s0").startswith("fast-ws-s0 (--recipe fast, weight-std, CPU")
    assert "weight-std" not in module.label_of(records / "fast-s0")
    assert module.label_of(tmp_path / "new") == "new"  # no config.json: the folder name alone


def test_readme_stays_short_and_doc_links_resolve():
    """The README is the newcomer's page (≤ 150 lines; per-command detail lives in docs/COMMANDS.md,
    the studies in docs/STUDIES.md), and every relative link or image in it and in docs/*.md points
    at a file that exists, from the page's own folder (docs/images/… in the README, images/… in docs/)."""
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 150
    pages = [readme, *sorted((ROOT / "docs").glob("*.md"))]
    assert {"COMMANDS.md", "STUDIES.md"} <= {p.name for p in pages}
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path = target.split("#", 1)[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"links to missing files: {broken}"
