"""Judging against the base: real tool outputs, compared by failure identity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from worktree_swarm.gate.baseline import failure_keys, judge
from worktree_swarm.gate.report import CheckResult

PYTEST_OUT = """\
..F.F
=========================== short test summary info ============================
FAILED tests/test_a.py::test_one - assert 1 == 2
FAILED tests/test_b.py::test_two[param] - KeyError
2 failed, 3 passed in 0.12s
"""
MYPY_BASE = "app/x.py:10: error: Incompatible return value type  [return-value]\nFound 1 error in 1 file\n"
MYPY_SHIFTED = "app/x.py:14: error: Incompatible return value type  [return-value]\nFound 1 error in 1 file\n"
MYPY_NEW = MYPY_SHIFTED + "app/y.py:3: error: Name \"z\" is not defined  [name-defined]\n"
BANDIT = """\
>> Issue: [B105:hardcoded_password_string] Possible hardcoded password: 'hunter2'
   Severity: Low   Confidence: Medium
   Location: ./app/conf.py:3:11
"""


def result(status: str, output: str = "") -> CheckResult:
    return CheckResult("check", "tests", status, 1.0, output[-2000:], "exit 1" if status == "fail" else "")  # type: ignore[arg-type]


def test_keys_of_each_tool() -> None:
    assert failure_keys(PYTEST_OUT) == {"test tests/test_a.py::test_one", "test tests/test_b.py::test_two[param]"}
    assert failure_keys(MYPY_BASE) == failure_keys(MYPY_SHIFTED) == {
        "app/x.py: Incompatible return value type  [return-value]"}
    assert failure_keys("src/a.ts(3,7): error TS2322: Type 'string' is not assignable.\n") == {
        "src/a.ts: TS2322: Type 'string' is not assignable."}
    assert failure_keys(BANDIT) == {"./app/conf.py: B105:hardcoded_password_string"}
    assert failure_keys("FAIL: test_x (pkg.tests.T.test_x)\n") == {"test test_x (pkg.tests.T.test_x)"}
    assert failure_keys("not ok 3 - adds numbers\n") == {"test adds numbers"}
    assert failure_keys("  ✕ renders a button (12 ms)\n") == {"test renders a button"}
    # Unknown tools: lines with their numbers blanked, so timings do not make a failure "new".
    assert failure_keys("oops at 12.5s\n\nbroken 3\n") == {"oops at #s", "broken #"}


def test_a_branch_failing_only_like_its_base_passes() -> None:
    judged = judge(result("fail", MYPY_SHIFTED), MYPY_SHIFTED, result("fail", MYPY_BASE), MYPY_BASE)
    assert judged.status == "pass"
    assert judged.note == "fails as the base does: 1 known failure, none new"
    assert judged.output == ""


def test_new_failures_are_named() -> None:
    judged = judge(result("fail", MYPY_NEW), MYPY_NEW, result("fail", MYPY_BASE), MYPY_BASE)
    assert judged.status == "fail"
    assert judged.note == "1 new failure beyond the base's 1"
    assert judged.output.startswith("New failures (the base fails too, but not with these):\n"
                                    "app/y.py: Name \"z\" is not defined  [name-defined]\n")


def test_fixing_a_base_failure_is_credited() -> None:
    one_left = "FAILED tests/test_b.py::test_two[param] - KeyError\n"
    judged = judge(result("fail", one_left), one_left, result("fail", PYTEST_OUT), PYTEST_OUT)
    assert (judged.status, judged.note) == ("pass", "fails as the base does: 1 known failure, none new; "
                                                    "fixes 1 of the base's")
    judged = judge(result("pass"), "", result("fail", PYTEST_OUT), PYTEST_OUT)
    assert (judged.status, judged.note) == ("pass", "fixes the base's 2 failures")


def test_a_passing_base_changes_nothing() -> None:
    failing = result("fail", PYTEST_OUT)
    assert judge(failing, PYTEST_OUT, result("pass"), "") is failing
    assert judge(failing, PYTEST_OUT, None, "") is failing


def test_real_pytest_output_is_understood(tmp_path: Path) -> None:
    """The keys come from a real pytest run, not from text written to match the parser."""
    (tmp_path / "test_real.py").write_text("import pytest\n\ndef test_ok():\n    pass\n\n"
                                           "@pytest.mark.parametrize('n', [1, 2])\ndef test_bad(n):\n"
                                           "    assert n == 1\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "test_real.py"],
                         cwd=tmp_path, capture_output=True, text=True).stdout
    assert failure_keys(out) == {"test test_real.py::test_bad[2]"}
