"""One benchmark figure beside its baseline; the table and the JSON file."""

from __future__ import annotations

import json
import math
import operator
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_CHECKS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
}


@dataclass
class Result:
    """A figure of moi (``value``) and of its baseline, and their ratio.

    ``ratio_of`` says which way the ratio is taken; ``target`` is a check
    such as ``"ratio <= 1.10"`` or ``"value <= 10"`` (``None``: no target).
    """

    name: str
    value: float
    baseline: float
    unit: str
    ratio_of: str = "value/baseline"
    target: str | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        a, b = (self.value, self.baseline)
        if self.ratio_of == "baseline/value":
            a, b = b, a
        return a / b if b else math.inf

    @property
    def met(self) -> bool | None:
        """Whether the target is met (``None`` without a target)."""
        if self.target is None:
            return None
        subject, check, bound = self.target.split()
        figure = self.ratio if subject == "ratio" else self.value
        return _CHECKS[check](round(figure, 6), float(bound))

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        del data["name"]
        return {**data, "ratio": round(self.ratio, 4), "met": self.met}


def _fmt(x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.4g}"


def table(results: list[Result]) -> str:
    """The results as a fixed-width text table."""
    rows = [("benchmark", "moi", "baseline", "unit", "ratio", "of", "target", "met")]
    for r in results:
        met = {None: "-", True: "yes", False: "NO"}[r.met]
        rows.append(
            (
                r.name,
                _fmt(r.value),
                _fmt(r.baseline),
                r.unit,
                _fmt(r.ratio),
                r.ratio_of,
                r.target or "-",
                met,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(results: list[Result], path: Path, merge: bool = False) -> None:
    """Write ``{name: {value, baseline, ratio, unit, target, ...}}`` to ``path``.

    With ``merge``, the figures already in the file for other names are kept.
    """
    data = json.loads(path.read_text()) if merge and path.exists() else {}
    data.update({r.name: r.as_json() for r in results})
    path.write_text(json.dumps(data, indent=2) + "\n")


def interleaved(
    sides: dict[str, Callable[[int], Any]], jobs: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds each side takes to submit ``jobs`` jobs and hold every result, ``rounds`` times.

    ``sides`` maps a name to a function submitting job ``i`` and returning its
    AsyncResult.  Each side runs once first as a warm-up (connections, imports
    on the engines); rounds take turns going first, so neither side always runs
    on a machine the other just warmed (or loaded).
    """

    def wall(submit_one: Callable[[int], Any]) -> float:
        start = time.perf_counter()
        results = [submit_one(i) for i in range(jobs)]
        for ar in results:
            ar.get(timeout=600)
        return time.perf_counter() - start

    for submit_one in sides.values():
        wall(submit_one)
    times: dict[str, list[float]] = {side: [] for side in sides}
    for round_ in range(rounds):
        for side in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
            times[side].append(wall(sides[side]))
    return times
