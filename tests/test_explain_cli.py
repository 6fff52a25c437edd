"""The `explain` / `evaluate` command functions that cli.py registers: output and bad input.

cli.py only parses flags and calls `cli_analysis`; its `user_errors` decorator turns a
UserError into one red line and exit 2, so here bad input must surface as a UserError with a
message that says what to change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_analysis import evaluate_command, explain_command
from common.errors import UserError
from pipeline.cifar_source import CLASSES
from tests.test_analysis import fake_probs, make_run, write_test_arrays
from tests.test_structure import assert_stays_clear_of_ffcv_and_training

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    _, labels = write_test_arrays(base / "data", n=40, seed=5)
    return make_run(base / "runs" / "r", base / "data", probs=fake_probs(labels, seed=5), labels=labels).path


def test_explain_command_prints_indices_scores_and_paths(run_dir):
    lines: list[str] = []
    explain_command(run_dir, layer=[3, 4], count=3, echo=lines.append)
    out = "\n".join(lines)
    assert "explained 3 of 20 misclassified test images" in out
    assert "test indices: " in out
    assert "higher is better" in out and "layer3" in out and "layer4" in out
    for name in ("misclassified.png", "gradcam_layer3.png", "gradcam_layer3_scores.json",
                 "gradcam_layer4.png", "gradcam_layer4_scores.json"):
        assert f"wrote {run_dir / 'analysis' / name}" in out
        assert (run_dir / "analysis" / name).is_file()


def test_evaluate_command_prints_table(run_dir):
    lines: list[str] = []
    evaluate_command(run_dir, echo=lines.append)
    out = "\n".join(lines)
    assert all(name in out for name in CLASSES)
    assert "overall" in out and "20 / 40" in out and "50.00%" in out
    assert f"wrote {run_dir / 'analysis' / 'confusion_matrix.png'}" in out


@pytest.mark.parametrize("kwargs, words", [
    ({"layer": [5]}, "--layer must be one of 1, 2, 3, 4"),
    ({"layer": [0]}, "--layer must be one of 1, 2, 3, 4"),
    ({"method": "gradcamm"}, "unknown CAM method 'gradcamm'; choose one of gradcam"),
    ({"pick": "best"}, "unknown --pick 'best'"),
    ({"count": 0}, "--count must be at least 1"),
    ({"which": "first"}, "choose 'best' or 'last'"),
])
def test_explain_command_bad_flags(run_dir, kwargs, words):
    with pytest.raises(UserError) as info:
        explain_command(run_dir, echo=lambda m: None, **kwargs)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_commands_bad_run(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        explain_command(tmp_path / "missing", echo=lambda m: None)
    with pytest.raises(UserError, match="no config.json"):
        evaluate_command(tmp_path, echo=lambda m: None)


def test_commands_never_import_ffcv_or_training(run_dir):
    assert_stays_clear_of_ffcv_and_training(
        "from cli_analysis import evaluate_command\n"
        "import analysis.inspection.explain, analysis.gallery, analysis.gradcam, analysis.inspection.faithfulness",
        f"evaluate_command({str(run_dir)!r}, echo=lambda m: None)")


def test_a_run_scored_on_a_test_subset_is_explained_on_that_subset(tmp_path):
    """`train --test-subset N` saves N predictions; analysis must use the same first N images."""
    _, labels = write_test_arrays(tmp_path / "data", n=40, seed=6)
    run = make_run(tmp_path / "runs" / "sub", tmp_path / "data", probs=fake_probs(labels[:20], seed=6),
                   labels=labels[:20], test_subset=20)
    lines: list[str] = []
    evaluate_command(run.path, echo=lines.append)
    assert "10 / 20" in "\n".join(lines)
    explain_command(run.path, layer=[3], count=3, echo=lines.append)
    assert any("explained 3 of 10 misclassified" in ln for ln in lines)
