"""Run one fuzz target under atheris: ``python fuzz/run.py TARGET [libFuzzer flags] [CORPUS…]``.

Example: ``python fuzz/run.py net_wire -runs=1000000 fuzz/corpus/net_wire``. Exit status 0
means no finding; a finding writes ``crash-*``/``timeout-*`` into ``-artifact_prefix``.
"""
from __future__ import annotations

import os
import sys

import atheris

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.append(os.path.join(os.path.dirname(_HERE), "src"))  # if agentconn is not installed

with atheris.instrument_imports(include=["agentconn", "targets"]):
    import targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: run.py TARGET [libFuzzer flags]; targets: {' '.join(targets.TARGETS)}")
    fn = targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0]] + sys.argv[2:], fn)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
