"""Golden config cases: each broken file under tests/cases/ must make `fieldlink check` exit 2
and print exactly the problems in its expected.txt; every shipped example must be valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CASES = sorted(p for p in (Path(__file__).parent / "cases").iterdir() if p.is_dir())
EXAMPLES = sorted((Path(__file__).parent.parent / "config" / "examples").glob("*.yaml"))


def run_check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}  # no FIELDLINK_TEST_* variables leak in
    return subprocess.run(
        [sys.executable, "-m", "fieldlink", "check", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_there_are_at_least_ten_broken_cases() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_config_is_refused_with_exact_message(case: Path) -> None:
    result = run_check("config.yaml", cwd=case)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (case / "expected.txt").read_text()
    assert result.stdout == ""


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_shipped_example_is_valid(example: Path) -> None:
    result = run_check(str(example), cwd=example.parent)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_check_reports_every_file_and_fails_if_one_is_bad() -> None:
    good = EXAMPLES[0]
    bad = CASES[0] / "config.yaml"
    result = run_check(str(good), str(bad), cwd=bad.parent)
    assert result.returncode == 2
    assert f"{good}: valid" in result.stdout
    assert "problem" in result.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_check("nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr == "nope.yaml: 1 problem\n  cannot read the file: No such file or directory\n"
    )
