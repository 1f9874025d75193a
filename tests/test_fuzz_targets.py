"""Every fuzz target (fuzz/targets.py) runs under atheris for a bounded time on its checked-in
seed corpus and finds nothing (issue 14 item 9).

Each target runs in its own subprocess (libFuzzer owns the process) for FUZZ_SECONDS (default
3 s; with ~2 s start-up each, 12 targets ≈ 60 s in CI), with the seed corpus copied to a temporary directory so new
inputs found do not touch the checked-in corpus. Exit status 0 means no crash, no uncaught
exception beyond what the target documents, no timeout (-timeout=10 s per input) and no
memory blow-up (-rss_limit_mb). Long runs: ``scripts/fuzz.sh TARGET [RUNS]``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import agentconn

atheris = pytest.importorskip("atheris")

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
SECONDS = int(os.environ.get("FUZZ_SECONDS", "3"))
# the agentconn this test run imports (installed wheel or src/), for the subprocesses too
PKG_ROOT = str(Path(agentconn.__file__).resolve().parent.parent)
NAMES = sorted(p.name for p in (FUZZ / "corpus").iterdir() if p.is_dir())


def test_every_target_has_a_corpus() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import targets; print(' '.join(sorted(targets.TARGETS)))"],
        capture_output=True, text=True, check=True, cwd=FUZZ,
        env=dict(os.environ, PYTHONPATH=f"{FUZZ}{os.pathsep}{PKG_ROOT}"),
    ).stdout.split()
    assert out == NAMES
    for name in NAMES:
        assert any((FUZZ / "corpus" / name).iterdir()), name


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_target(name: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / name, corpus)
    env = dict(os.environ, PYTHONPATH=PKG_ROOT)
    proc = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), name, f"-max_total_time={SECONDS}",
         "-timeout=10", "-rss_limit_mb=2048", "-max_len=4096",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=SECONDS + 120, env=env, cwd=tmp_path,
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, f"{name}: fuzzer exit {proc.returncode}\n{tail}"
