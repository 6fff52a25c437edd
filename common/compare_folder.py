"""The compare folder: the one owner of its layout and of compare.json.

`compare` (training/compare.py) writes the record and trains one run per norm into it; analysis
(analysis/compare/tables.py, the report) reads it and writes the comparison figure and tables beside
it. Both go through this module, so the file names and the record's keys are spelled once.

    <folder>/
      compare.json      the record below (written first, atomically; resuming compares against it)
      comparison.png    train (dashed) and test (solid) loss and accuracy per epoch, one colour per norm
      comparison.json   {"rows": [...], "settings": {...}}: the table, machine-readable
      comparison.md     the table as GitHub markdown
      <norm>/           each trained norm's run directory (a reused run stays where it was);
      <norm>-seed<k>/   ... with several --seeds, one per (norm, seed); compare.json's `runs` keys
                        name them the same way, and settings["seeds"] lists the seeds
      comparison.json also holds, with several seeds, "seed_summary", "paired_differences",
      "interval" and "left_out" (analysis/compare/tables.py, analysis/compare/stats.py)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import write_json
from common.errors import UserError

COMPARE_FILE = "compare.json"
FIGURE_FILE = "comparison.png"
TABLE_JSON_FILE = "comparison.json"
TABLE_MD_FILE = "comparison.md"
KIND = "compare"


@dataclass
class CompareRecord:
    """compare.json. `runs` maps norm → run folder: relative paths are inside the compare folder
    (<norm>, a trained run), absolute ones are finished runs reused with --runs."""

    norms: list[str]
    runs: dict[str, str]
    train: dict[str, Any] = field(default_factory=dict)  # the shared TrainConfig, less per-run settings
    settings: dict[str, Any] = field(default_factory=dict)  # the few settings a reader shows
    created: str | None = None  # ISO time of the first attempt (kept when resumed)
    kind: str = KIND
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer writer, kept on a round trip

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CompareRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: raw[k] for k in names if k in raw}
        known.setdefault("norms", list(raw["runs"]))
        return cls(**known, extra={k: v for k, v in raw.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("kind", "extra")}
        return {"kind": self.kind, **{k: v for k, v in out.items() if v is not None}, **self.extra}


def compare_path(folder: str | Path) -> Path:
    return Path(folder) / COMPARE_FILE


def is_compare_dir(path: str | Path) -> bool:
    return compare_path(path).is_file()


def norm_dir(folder: str | Path, norm: str) -> Path:
    """Where `compare` trains a norm's run."""
    return Path(folder) / norm


def figure_path(folder: str | Path) -> Path:
    return Path(folder) / FIGURE_FILE


def table_json_path(folder: str | Path) -> Path:
    return Path(folder) / TABLE_JSON_FILE


def table_md_path(folder: str | Path) -> Path:
    return Path(folder) / TABLE_MD_FILE


def write_compare(folder: str | Path, record: CompareRecord) -> Path:
    """Write compare.json atomically (the folder must exist)."""
    path = compare_path(folder)
    write_json(path, record.to_dict())
    return path


def read_compare(folder: str | Path) -> CompareRecord:
    """compare.json as a record; one-sentence UserError when it is missing or damaged."""
    path = compare_path(folder)
    if not path.is_file():
        raise UserError(f"{folder} is not a comparison folder (no {COMPARE_FILE}); make one with "
                        "`python cli.py compare`")
    try:
        raw = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON; the comparison folder is damaged") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("runs"), dict):
        raise UserError(f"{path} does not describe a comparison (no 'runs'); the folder is damaged")
    return CompareRecord.from_dict(raw)


def run_paths(folder: str | Path, record: CompareRecord) -> dict[str, Path]:
    """norm → run folder, in the record's order; relative paths resolved inside the compare folder."""
    folder = Path(folder)
    out = {}
    for norm, rel in record.runs.items():
        path = Path(rel)
        out[norm] = path if path.is_absolute() else folder / path
    return out
