"""Real git repositories for the git-watch tests: ``git init`` and commits with a fixed
author, no system or user configuration, and a prerequisite check that fails under CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

AUTHOR = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
          "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_NAME": "Test",
          "GIT_COMMITTER_EMAIL": "test@example.invalid",
          "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}


def require_git() -> None:
    """Skip without ``git`` — but fail under CI=true, where it must be installed."""
    if shutil.which("git") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("git watch tests need git (Debian package git)", pytrace=False)
        pytest.skip("git is not installed")


def git_env(home: Path) -> dict[str, str]:
    """An environment for git: PATH, a private HOME, no system config, the fixed author."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C", **AUTHOR}


def git(repo: Path, *args: str, home: Path, check: bool = True,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=repo, env=git_env(home), input=input,
                          capture_output=True, check=check, timeout=60)


def make_repo(path: Path, home: Path, *, branch: str = "main", origin: str | None = None,
              files: dict[str, str] | None = None) -> Path:
    """A repository at ``path`` with one commit of ``files`` on ``branch``."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch, ".", home=home)
    for name, text in (files or {"README.md": "hello\n"}).items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    git(path, "add", "-A", home=home)
    git(path, "commit", "-q", "-m", "initial", home=home)
    if origin is not None:
        git(path, "remote", "add", "origin", origin, home=home)
    return path


def apply_check(repo: Path, diff: str, scratch: Path, home: Path) -> Path:
    """Clone ``repo`` at HEAD into ``scratch`` and ``git apply`` ``diff`` there (after
    ``--check``); returns the clone. Raises AssertionError with git's complaint."""
    clone = scratch / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], env=git_env(home),
                   capture_output=True, check=True, timeout=60)
    for args in (("apply", "--check", "-"), ("apply", "-")):
        r = git(clone, *args, home=home, check=False, input=diff.encode())
        assert r.returncode == 0, r.stderr.decode()
    return clone
