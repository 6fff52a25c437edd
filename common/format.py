"""Numbers as people read them: durations, percentages, config values.

One spelling per quantity for every printer in the project (the train command's closing line,
compare's markdown table, the HTML report), so a wall time reads the same everywhere it appears.
"""

from __future__ import annotations

import json
from typing import Any

MISSING = "—"


def duration(seconds: float | None, compact: bool = False) -> str:
    """A wall time. compact ("3m01.5s", minutes and seconds only) for terminals and markdown tables;
    otherwise "45.0 s", "3 min 01.5 s", "2 h 05 min" for pages. Not a number: "—"."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return MISSING
    if compact:
        minutes, secs = divmod(float(seconds), 60)
        return f"{int(minutes)}m{secs:04.1f}s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {secs:04.1f} s"
    hours, whole_minutes = divmod(int(minutes), 60)
    return f"{hours} h {whole_minutes:02d} min"


def percent(fraction: Any, digits: int = 2) -> str:
    """A fraction in [0, 1] as a percentage ("52.34%"); not a number: "—"."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
        return MISSING
    return f"{100 * fraction:.{digits}f}%"


def value_text(value: Any) -> str:
    """A config or JSON value as text: JSON spellings for null and booleans, short floats."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(value_text(x) for x in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def flatten(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys ("machine.cpu_cores"), so a record fits a two-column table."""
    items: list[tuple[str, Any]] = []
    for key, value in record.items():
        if isinstance(value, dict) and value:
            items += flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items
