"""The code passes ruff and mypy --strict, tests and bench too (run here so CI enforces them)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff() -> None:
    result = _run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    """Over what pyproject.toml lists (see the next test)."""
    result = _run(str(BIN / "mypy"), "--strict")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_covers_tests_and_bench_with_no_relaxed_module() -> None:
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["strict"] is True
    assert set(mypy["files"]) == {"meshctl", "meshd", "tests", "bench"}
    for override in mypy.get("overrides", []):  # a missing third-party stub, nothing else
        assert set(override) <= {"module", "ignore_missing_imports"}, override
