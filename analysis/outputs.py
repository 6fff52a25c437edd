"""The file names of what analysis writes and reads in a run folder: one owner for both sides.

`explain` and `evaluate` write through these paths and the report reads through them, so a name
is spelled once (CAM files carry the method's slug: gradcam_layer3.png, gradcampp_layer4.png).

    <run>/analysis/
      misclassified.png                 explain: the chosen mistakes
      {slug}_layer{L}.png               explain: each image beside its CAM overlay
      {slug}_layer{L}_scores.json       explain: per-image and mean faithfulness (ROAD)
      confusion_matrix.png              evaluate
      evaluation.json                   evaluate: overall and per-class accuracy, confusion counts
    <run>/report.html                   report (default --out)
    <run>/bench.json                    read by the report when present (bench train --json RUN/bench.json)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.gradcam import method_slug
from common.rundir import RunDir

REPORT_FILE = "report.html"
BENCH_FILE = "bench.json"
GALLERY_FILE = "misclassified.png"
CONFUSION_FILE = "confusion_matrix.png"
EVALUATION_FILE = "evaluation.json"


@dataclass(frozen=True)
class AnalysisFiles:
    """Paths inside one run's analysis folder."""

    folder: Path

    @classmethod
    def of(cls, run: RunDir) -> AnalysisFiles:
        return cls(run.analysis_dir)

    @property
    def gallery(self) -> Path:
        return self.folder / GALLERY_FILE

    @property
    def confusion_matrix(self) -> Path:
        return self.folder / CONFUSION_FILE

    @property
    def evaluation(self) -> Path:
        return self.folder / EVALUATION_FILE

    def cam_figure(self, method: str, layer: int) -> Path:
        return self.folder / f"{method_slug(method)}_layer{layer}.png"

    def cam_scores(self, method: str, layer: int) -> Path:
        return self.folder / f"{method_slug(method)}_layer{layer}_scores.json"

    def evaluate_files(self) -> list[Path]:
        """What `evaluate` writes."""
        return [self.confusion_matrix, self.evaluation]

    def explain_files(self, method: str, layers: list[int] | tuple[int, ...]) -> list[Path]:
        """What `explain` writes for these layers."""
        files = [self.gallery]
        for layer in layers:
            files += [self.cam_figure(method, layer), self.cam_scores(method, layer)]
        return files


def report_path(folder: str | Path) -> Path:
    return Path(folder) / REPORT_FILE


def bench_path(run: RunDir) -> Path:
    return run.path / BENCH_FILE


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is missing or not JSON (the caller says what to do)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
