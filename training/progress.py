"""Per-step progress: a bar on a terminal, a line every `every` seconds anywhere else.

Off a terminal (CI, nohup, cluster logs) tqdm's carriage-return redraws all land in the file:
one full CPU epoch left about 90 KB of them, so 40 epochs about 3.6 MB. There a plain line every
30 s (and the per-epoch summary the loop prints anyway) reads well and stays small.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

LINE_EVERY_S = 30.0


class Progress:
    def __init__(self, total: int, initial: int, desc: str, enabled: bool, log: Callable[[str], None],
                 stream: TextIO | None = None, every: float = LINE_EVERY_S):
        self.total, self.done, self.desc = total, initial, desc
        self.log, self.every = log, every
        self.fields: dict[str, str] = {}
        self.bar: Any = None
        self.lines = False
        self.next_line = time.monotonic() + every
        if not enabled:
            return
        stream = stream if stream is not None else sys.stderr
        if stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False,
                            dynamic_ncols=True, file=stream)
        else:
            self.lines = True

    def set(self, fields: dict[str, str]) -> None:
        """The figures shown beside the count, by label (labels may hold any character: "img/s")."""
        self.fields = fields
        if self.bar is not None:
            self.bar.set_postfix(fields)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and time.monotonic() >= self.next_line:
            self.next_line = time.monotonic() + self.every
            extra = "  ".join(f"{k} {v}" for k, v in self.fields.items())
            self.log(f"{self.desc}: step {self.done}/{self.total}  {extra}".rstrip())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
