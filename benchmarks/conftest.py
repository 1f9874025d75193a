"""Shared fixtures for the benchmarks: a results collector and the end-of-session table.

Run: ``PYTHONPATH=src python -m pytest benchmarks -q -p no:cacheprovider --benchmark-only``.
``benchmarks/pytest.ini`` makes this directory its own rootdir, so ``bench_*.py`` files are
collected here and plain ``pytest`` (testpaths = tests) never sees them.
"""
from __future__ import annotations

from typing import Any

import pytest

_RESULTS: list[dict[str, Any]] = []


class Recorder:
    """Collects one row per benchmark for the summary table (and mirrors it in extra_info)."""

    def add(self, benchmark: Any, *, group: str, name: str, seconds: float, packets: int = 0,
            payload_bytes: int = 0, unit: str = "ops/s", **extra: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"group": group, "name": name, "seconds": seconds, **extra}
        if packets:
            row["packets_per_s"] = packets / seconds
            row["gbit_per_s"] = payload_bytes * 8 / seconds / 1e9
        else:
            row["ops_per_s"] = 1 / seconds
        for key, value in row.items():
            if key not in ("group", "name"):
                benchmark.extra_info[key] = value
        _RESULTS.append(row)
        return row


@pytest.fixture
def record() -> Recorder:
    return Recorder()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("agentconn benchmark summary (medians)")
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in _RESULTS:
        groups.setdefault(row["group"], []).append(row)
    for group, rows in groups.items():
        write(group)
        raws = [r for r in rows if r.get("role") == "raw"]
        for row in rows:
            if "packets_per_s" in row:
                line = (f"  {row['name']:<40} {row['gbit_per_s']:6.2f} Gbit/s "
                        f"{row['packets_per_s'] / 1e3:8.1f} kpkt/s "
                        f"{row['seconds'] * 1e6:8.1f} us/batch")
                if row.get("role") == "ours" and raws:
                    line += "   ours/raw: " + ", ".join(
                        f"{row['gbit_per_s'] / r['gbit_per_s']:.3f} ({r['short']})" for r in raws)
            else:
                line = (f"  {row['name']:<40} {row['ops_per_s']:8.1f} /s "
                        f"{row['seconds'] * 1e6:8.1f} us each")
            write(line)
