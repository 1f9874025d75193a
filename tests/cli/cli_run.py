"""Run the real ``agentconn`` entry point in a subprocess with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import _wgcore
import agentconn

# Where this checkout's agentconn and compiled _wgcore live, for the child's PYTHONPATH.
PYTHONPATH = os.pathsep.join(dict.fromkeys([
    str(Path(agentconn.__file__).resolve().parent.parent),
    str(Path(_wgcore.__file__).resolve().parent.parent)]))


@dataclass(frozen=True)
class Result:
    """How a CLI run ended."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


#: ``cli(*argv, env=..., module=...)``: see :func:`run_cli`
Cli = Callable[..., Result]


def run_cli(home: Path, *argv: str, env: Mapping[str, str] | None = None,
            module: str = "agentconn.cli", timeout: float = 60) -> Result:
    """``python -m module *argv`` with only PATH, HOME, LANG and PYTHONPATH set, plus
    ``env``; stdin is empty."""
    child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                 "PYTHONPATH": PYTHONPATH, "LANG": "C.UTF-8", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *argv], env=child_env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)
