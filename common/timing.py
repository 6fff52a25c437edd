"""`Timings`: seconds per named phase of a command, on one clock (time.perf_counter).

    timings = Timings("read", "model")     # phases listed here start at 0.0, so they always exist
    with timings.phase("load"):            # adds the block's wall time to timings["load"]
        ...
    with timings.phase("model") as lap:    # a phase may repeat (per batch): the seconds add up
        ...
    lap.seconds                            # this one block's seconds
    timings.stop()                         # timings["total"]: seconds since Timings() was made

A `Timings` is a plain dict of floats for its readers (results, JSON, the CLI's 'took' line).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Lap:
    seconds: float = 0.0  # set when the `with` block ends


class Timings(dict[str, float]):
    def __init__(self, *phases: str) -> None:
        super().__init__((name, 0.0) for name in phases)
        self.started = time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[Lap]:
        """Time the block and add its seconds to self[name] (a block that raises adds nothing)."""
        lap, start = Lap(), time.perf_counter()
        yield lap
        lap.seconds = time.perf_counter() - start
        self[name] = self.get(name, 0.0) + lap.seconds

    def stop(self) -> float:
        """Record and return self["total"], the seconds since this object was made."""
        self["total"] = time.perf_counter() - self.started
        return self["total"]
