"""The benchmark table and JSON: ratios taken the stated way, targets checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from results import Result, table, write_json  # noqa: E402


def test_ratios_targets_and_json(tmp_path):
    slower = Result("submit_overhead", 1.2, 1.0, "s", target="ratio <= 1.10")
    faster = Result("tree_read", 10.0, 400.0, "ms", ratio_of="baseline/value", target="ratio >= 20")
    latency = Result("push_latency_p99", 3.0, 9.0, "ms", target="value <= 10")
    plain = Result("broadcast_p99", 5.0, 10.0, "ms")
    assert (slower.ratio, slower.met) == (1.2, False)
    assert (faster.ratio, faster.met) == (40.0, True)
    assert latency.met is True and plain.met is None
    text = table([slower, faster, latency, plain])
    assert "NO" in text.splitlines()[2] and "yes" in text.splitlines()[3]
    out = tmp_path / "results.json"
    write_json([slower, faster], out)
    data = json.loads(out.read_text())
    assert data["tree_read"] == {
        "value": 10.0,
        "baseline": 400.0,
        "unit": "ms",
        "ratio_of": "baseline/value",
        "target": "ratio >= 20",
        "note": "",
        "ratio": 40.0,
        "met": True,
    }
    assert data["submit_overhead"]["met"] is False
