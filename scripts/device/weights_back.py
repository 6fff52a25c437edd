"""A run's weights, small enough to come back from the lent GPU machine.

Usage there: python3 scripts/device/weights_back.py RUN_DIR NAME

Loads RUN_DIR/last.pt, drops the optimizer state (half the file; evaluate, explain and export do
not need it), and writes the rest to $OUT as NAME.pt.part00, .part01, … of at most 15 MiB each
(the device tool returns files of ≤ 16 MiB), then prints the whole file's sha256. Here,
`cat NAME.pt.part* > RUN/last.pt` rebuilds a checkpoint that the analysis commands load.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path

import torch

PIECE = 15 * 2**20


def main(run: Path, name: str, out: Path) -> None:
    checkpoint = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    checkpoint.pop("optimizer", None)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    for i, start in enumerate(range(0, len(data), PIECE)):
        (out / f"{name}.pt.part{i:02d}").write_bytes(data[start:start + PIECE])
    print(f"{hashlib.sha256(data).hexdigest()}  {name}.pt ({run / 'last.pt'} without its optimizer state)")


if __name__ == "__main__":
    if len(sys.argv) != 3 or not (Path(sys.argv[1]) / "last.pt").is_file() or "OUT" not in os.environ:
        sys.exit("usage: OUT=DIR python3 scripts/device/weights_back.py RUN_DIR NAME (RUN_DIR with a last.pt)")
    main(Path(sys.argv[1]), sys.argv[2], Path(os.environ["OUT"]))
