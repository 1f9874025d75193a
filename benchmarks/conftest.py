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

    def add_transfer(self, benchmark: Any, *, group: str, case: str, role: str,
                     direction: str, nbytes: int, seconds: float,
                     cpu_seconds: float | None = None, wg_cpu_seconds: float | None = None,
                     note: str = "") -> dict[str, Any]:
        """One bulk transfer (bench_tcp.py): payload bytes at the receiver over `seconds`.

        `role`: "baseline-iperf3", "baseline-python" or "ours"; the summary prints each "ours"
        row's ratio to the baselines of the same group and direction. `cpu_seconds`: our
        process's CPU during the transfer; `wg_cpu_seconds`: wireguard-go's.
        """
        gb = nbytes / 1e9
        row: dict[str, Any] = {
            "group": group, "name": f"{case} ({direction})", "kind": "transfer", "case": case,
            "role": role, "direction": direction, "bytes": nbytes, "seconds": seconds,
            "gbit_per_s": nbytes * 8 / seconds / 1e9, "note": note,
            "cpu_s_per_gb": cpu_seconds / gb if cpu_seconds is not None else None,
            "wg_cpu_s_per_gb": wg_cpu_seconds / gb if wg_cpu_seconds is not None else None,
        }
        for key, value in row.items():
            if key not in ("group", "name", "kind") and value is not None:
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
        if rows[0].get("kind") == "transfer":
            _write_transfers(write, rows)
            continue
        if rows[0].get("kind") == "api":
            _write_api(write, rows)
            continue
        if rows[0].get("kind") == "relay":
            for row in rows:
                if "mbit_per_s" in row:
                    write(f"  {row['name']:<36} {row['mbit_per_s']:8.0f} Mbit/s  "
                          f"{row['cpu_s_per_gb']:6.2f} CPU s/GB")
                else:
                    write(f"  {row['name']:<36} p50 {row['p50'] * 1e3:.3f} ms  "
                          f"p99 {row['p99'] * 1e3:.3f} ms")
            continue
        if str(rows[0].get("kind", "")).startswith("desktop"):
            _write_desktop(write, rows)
            continue
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


_BASELINES = {"baseline-iperf3": "/iperf3", "baseline-python": "/py-base"}


def _write_transfers(write: Any, rows: list[dict[str, Any]]) -> None:
    """One line per case and direction; "ours" rows with their ratios to the baselines."""
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    write(f"  {'direction':<9} {'case':<44} {'Gbit/s':>7} {'/iperf3':>8} {'/py-base':>8}"
          f" {'CPU s/GB ours':>13} {'wg-go':>6}  notes")
    for direction in sorted({r["direction"] for r in rows}, key=["upload", "download"].index):
        same = [r for r in rows if r["direction"] == direction]
        base = {r["role"]: r for r in same if r["role"] in _BASELINES}
        for row in sorted(same, key=lambda r: r["role"] == "ours"):
            ratios = {label: (row["gbit_per_s"] / base[role]["gbit_per_s"]
                              if row["role"] == "ours" and role in base else None)
                      for role, label in _BASELINES.items()}
            write(f"  {direction:<9} {row['case']:<44} {row['gbit_per_s']:7.3f}"
                  f" {num(ratios['/iperf3'], '8.3f'):>8} {num(ratios['/py-base'], '8.3f'):>8}"
                  f" {num(row['cpu_s_per_gb'], '13.1f'):>13}"
                  f" {num(row['wg_cpu_s_per_gb'], '6.1f'):>6}  {row['note']}")
        if not any(r["role"] == "ours" for r in same):
            write(f"  {direction:<9} {'ours: not measured (failed or skipped)':<44}")
    write("  /iperf3, /py-base: ours divided by wireguard-go <-> wireguard-go with iperf3 / with "
          "the Python peers, same direction. CPU s/GB: process CPU (user+sys) per GB moved; "
          "wg-go: all wireguard-go processes of the case.")


def _write_api(write: Any, rows: list[dict[str, Any]]) -> None:
    """bench_agent_api.py: small-call latency and bulk throughput, keep-alive vs per call."""
    base = {r["name"].rsplit(", ", 1)[0]: r for r in rows if r["name"].endswith("per-call")}
    for row in rows:
        stem = row["name"].rsplit(", ", 1)[0]
        if "p50" in row:
            line = (f"  {row['name']:<36} {row['calls_per_s']:8.0f} calls/s  p50 "
                    f"{row['p50'] * 1e3:6.2f} ms  p99 {row['p99'] * 1e3:6.2f} ms  "
                    f"{row['connections']} TCP connections")
        else:
            line = f"  {row['name']:<36} {row['mb_per_s']:8.1f} MB/s"
        if row["name"].endswith("keep-alive") and stem in base:
            ref = base[stem]
            line += f"   keep-alive/per-call: {ref['seconds'] / row['seconds']:.2f}x"
        write(line)


def _write_desktop(write: Any, rows: list[dict[str, Any]]) -> None:
    """bench_desktop.py: VNC frames through the agent next to the direct reference, and the
    screenshot action's latency."""
    for row in rows:
        if row.get("kind") == "desktop-shot":
            write(f"  {row['name']:<40} p50 {row['p50'] * 1e3:7.1f} ms  p99 "
                  f"{row['p99'] * 1e3:7.1f} ms  ({row['png_bytes'] / 1e3:.0f} kB PNG)")
            continue
        line = (f"  {row['name']:<40} {row['frames_per_s']:7.1f} frames/s "
                f"{row['mb_per_s']:8.1f} MB/s")
        if row.get("cpu_s_per_gb") is not None:
            line += f" {row['cpu_s_per_gb']:5.2f} CPU s/GB"
        if row.get("ratio") is not None:
            line += f"   /direct: {row['ratio']:.3f}"
        if row.get("tunnel_ratio") is not None:
            line += f"   /raw TCP: {row['tunnel_ratio']:.3f}"
        write(line)
