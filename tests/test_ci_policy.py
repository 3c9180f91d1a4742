"""The suite's own rule for CI: a test skipped for want of a tool fails the run under CI=true,
and stays a skip (with its reason printed) anywhere else."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

SKIPPING_TESTS = """
import pytest

def test_needs_a_tool():
    pytest.skip("sometool is not installed")

@pytest.fixture(scope="module")
def tool():
    pytest.skip("othertool is not installed")

def test_needs_a_tool_through_a_fixture(tool):
    pass

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    raise AssertionError
"""


def run_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    # The conftest as it is, with the module of fixtures it imports.
    for name in ("conftest.py", "browser.py"):
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_tools.py").write_text(SKIPPING_TESTS)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-n0", "-ra", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_tool_fails_the_run_under_ci(tmp_path: Path, ci: str) -> None:
    result = run_suite(tmp_path, ci)
    assert result.returncode == 1, result.stdout
    assert "CI=true, so this skip fails the run: Skipped: sometool is not installed" in (
        result.stdout
    )
    assert "othertool is not installed" in result.stdout
    assert "1 failed, 1 xfailed, 1 error" in result.stdout


def test_a_missing_tool_is_a_skip_with_its_reason_outside_ci(tmp_path: Path) -> None:
    result = run_suite(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "SKIPPED [1] test_tools.py:5: sometool is not installed" in result.stdout
    assert "2 skipped, 1 xfailed" in result.stdout
