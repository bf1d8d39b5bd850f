"""The demo is the product's first impression: it must run a whole swarm and tell the truth."""

from __future__ import annotations

from pathlib import Path

from conftest import git, wswarm


def test_demo_runs_a_whole_swarm(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    res = wswarm(tmp_path, "demo", "--dir", str(target), timeout=300)
    assert res.returncode == 0, res.stderr
    body = res.stdout
    assert "6 of 6 tasks merged" in body
    assert "clean-run ratio **4/6**" in body
    assert "`refactor-forms` attempt 1: conflict — merge conflict in shop/components/\\_\\_init\\_\\_.py" in body
    assert "`update-tests-forms` attempt 1: gate-failed" in body
    branch = next(line.split()[-1] for line in res.stderr.splitlines() if line.startswith("run ") and
                  "integration branch" in line)
    assert git(target, "show", f"{branch}:shop/components/__init__.py").endswith('FUNCTIONAL = ["button", "form"]')
    # The integration tree passes the sample's own tests.
    git(target, "worktree", "add", "-q", "--detach", str(tmp_path / "check"), branch)
    import subprocess
    import sys
    tests = subprocess.run([sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", "."],
                           cwd=tmp_path / "check", capture_output=True, text=True)
    assert tests.returncode == 0, tests.stderr
    assert "Ran 4 tests" in tests.stderr
    # The user's checkout was never touched.
    assert git(target, "status", "--porcelain") == ""
    assert git(target, "rev-parse", "--abbrev-ref", "HEAD") == "main"
