"""A branch failing exactly as its base does is judged the same wherever each was checked out: in a
task's slot, in a base worktree, with scratch and temporary folders of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import Repo, wswarm, write_plan
from worktree_swarm.gate.baseline import failure_keys, judge
from worktree_swarm.gate.report import CheckResult, normalise_paths

PYTEST = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider"]
# The layout of a src-layout project run without installing it: the conftest cannot import it.
PROJECT = {
    "src/pkg/__init__.py": "VALUE = 1\n",
    "tests/conftest.py": "from pkg import VALUE\n",
    "tests/test_value.py": "from pkg import VALUE\n\n\ndef test_value():\n    assert VALUE == 1\n",
}


def project(root: Path) -> Path:
    for rel, text in PROJECT.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[CheckResult, str]:
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    output = res.stdout + res.stderr
    assert res.returncode != 0, output
    return CheckResult("tests", "tests", "fail", 0.5, output[-4000:], f"exit {res.returncode}"), output


def test_the_same_failure_in_a_base_worktree_and_in_a_slot_is_not_new(tmp_path: Path) -> None:
    state = tmp_path / "repo" / ".git" / "wswarm"
    base_dir = project(state / "worktrees" / "20260101-000000-abcd--api--1--base")
    slot_dir = project(state / "slots" / "slot-0a1b2c3d4e")
    (slot_dir / "src" / "pkg" / "extra.py").write_text("MORE = 2\n")   # the task's change
    base = run(PYTEST, base_dir)
    branch = run(PYTEST, slot_dir)
    # The failure names each checkout's own path ...
    assert str(base_dir) in base[1] and str(slot_dir) in branch[1]
    # ... which is not part of what is compared.
    assert failure_keys(base[1]) == failure_keys(branch[1])
    assert any("<checkout>/tests/conftest.py" in key for key in failure_keys(branch[1]))
    judged = judge(*branch, *base)
    assert judged.status == "pass", judged.note
    assert judged.note.startswith("fails as the base does:") and "none new" in judged.note


def test_temporary_and_scratch_folders_are_not_compared(tmp_path: Path) -> None:
    """A check that names a folder made for it (mkdtemp in the system's temp folder, or in the
    scratch TMPDIR a confined check gets beside its log) fails the same way in every run."""
    check = [sys.executable, "-c", "import tempfile; d = tempfile.mkdtemp(); "
                                   "raise SystemExit(f'cannot read {d}/settings.json')"]
    first, second = run(check, tmp_path), run(check, tmp_path)
    assert first[1] != second[1]
    assert judge(*second, *first).status == "pass"
    attempt = tmp_path / "repo" / ".git" / "wswarm" / "runs" / "20260101-000000-abcd" / "attempts" / "api" / "1"
    scratch = {}
    for log in ("gate-tests.log", "probe-0123456789ab-tests.log"):
        scratch[log] = attempt / f"{log}.scratch" / "tmp"
        scratch[log].mkdir(parents=True)
    on_branch = run(check, tmp_path, env={"TMPDIR": str(scratch["gate-tests.log"])})
    on_base = run(check, tmp_path, env={"TMPDIR": str(scratch["probe-0123456789ab-tests.log"])})
    assert str(scratch["gate-tests.log"]) in on_branch[1]
    assert judge(*on_branch, *on_base).status == "pass"
    # A different failure in the same places is still new.
    other = [sys.executable, "-c", "raise SystemExit('cannot write /tmp/report.xml')"]
    assert judge(*run(other, tmp_path), *first).status == "fail"


def test_placeholders() -> None:
    text = ("ImportError while loading conftest '/home/u/p/.git/wswarm/slots/slot-9f8e7d6c5b/tests/conftest.py'.\n"
            'File "/home/u/p/.git/wswarm/worktrees/20260101-000000-abcd--a%2Fb--2--base/t.py", line 3\n'
            "rootdir: /home/u/p/.git/wswarm/worktrees/20260101-000000-abcd--merge-gate\n"
            "HOME=/s/runs/r/attempts/a/1/gate-x.log.scratch/home/.cache\n"
            "/tmp/pytest-of-u/pytest-12/test_a0/out.txt and /tmp/tmpab_12x/in.txt, not /tmpfoo/x\n")
    assert normalise_paths(text) == (
        "ImportError while loading conftest '<checkout>/tests/conftest.py'.\n"
        'File "<checkout>/t.py", line 3\n'
        "rootdir: <checkout>\n"
        "HOME=<home>/.cache\n"
        "<tmp>/test_a0/out.txt and <tmp>/in.txt, not /tmpfoo/x\n")


def test_a_run_merges_a_task_that_fails_only_as_its_base_does(repo: Repo, agent_script: object) -> None:
    """End to end: the branch is checked in its slot, the base in a base worktree of its own."""
    for rel, text in PROJECT.items():
        repo.write(rel, text)
    run_tests = " ".join(PYTEST)
    repo.write("wswarm.toml", f'[[gate.checks]]\nname = "pytest"\nkind = "tests"\nrun = "{run_tests}"\n')
    repo.commit_all("a src-layout project whose tests cannot import it")
    write_plan(repo.path / "plan.json", [{"id": "more", "description": "add a module"}])
    agent = agent_script('Path("src/pkg/more.py").write_text("MORE = 2\\n")\n')  # type: ignore[operator]
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent, "--max-attempts", "1")
    st = wswarm(repo.path, "status", "--json").json()
    assert st["tasks"][0]["status"] == "merged", res.stdout + res.stderr
    # The merged result fails as the base does: the run says so (exit 1), blaming no task.
    assert res.returncode == 1 and st["merge_gate"] == "failed"
    attempt = repo.state_dir / "runs" / st["run"] / "attempts" / "more" / "1"
    branch_log = (attempt / "gate-pytest.log").read_text()
    base_log = next(attempt.glob("probe-*-pytest.log")).read_text()
    assert "/wswarm/slots/slot-" in branch_log and "--base/tests/conftest.py" in base_log
    gate = (attempt / "gate.json").read_text()
    assert "fails as the base does" in gate
