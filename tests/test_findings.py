"""What a failing or warning check found — file, line, rule, the failing tests — reaches `logs`,
`status` (human and --json), the PR body and the dashboard's attempt view; and the Claude Code
session an attempt ran in is shown with a way back into it. Real tools, real runs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from rich.console import Console

from conftest import Repo, wswarm, write_plan
from worktree_swarm.gate.baseline import judge
from worktree_swarm.gate.report import CheckResult, GateReport, check_findings, findings
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.ui.api import tasks_data
from worktree_swarm.ui.feed import EventTail, Feed
from worktree_swarm.ui.live import render

KEY = "AKIA" + "Z7Q2LMN4VWX8TR3P"   # the shape of an AWS access key id, split so no scanner flags this file
SESSION = "4f1c2d3e-5a6b-4c7d-8e9f-0a1b2c3d4e5f"


def failing(argv: list[str], cwd: Path, name: str = "tests") -> tuple[CheckResult, str]:
    """A configured check's result as the gate records it: the tail of the output of a real run."""
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    assert res.returncode != 0, res.stdout + res.stderr
    output = res.stdout + res.stderr
    return CheckResult(name, "tests", "fail", 0.4, "\n".join(output.splitlines()[-40:]), f"exit {res.returncode}"), output


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


# --- reading findings from real tool output ------------------------------------------------------

def test_a_failed_pytest_run_names_its_failing_tests(tmp_path: Path) -> None:
    write(tmp_path, {"tests/test_money.py": """\
        import pytest

        def test_add():
            assert 1 + 1 == 3

        @pytest.mark.parametrize("n", [1, 2])
        def test_param(n):
            assert n == 1

        def test_ok():
            pass
        """, "tests/test_broken.py": "import nowhere_to_be_found\n"})
    result, _ = failing([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
                         "--continue-on-collection-errors", "tests"], tmp_path)
    found = [(f.check, f.path, f.line, f.message) for f in check_findings(result)]
    assert found == [("tests", "tests/test_money.py", None, "test_add failed: assert (1 + 1) == 3"),
                     ("tests", "tests/test_money.py", None, "test_param[2] failed: assert 2 == 1"),
                     ("tests", "tests/test_broken.py", None, "could not be collected")]


def test_a_failed_unittest_run_names_its_tests_with_file_line_and_error(tmp_path: Path) -> None:
    slot = write(tmp_path / "repo" / ".git" / "wswarm" / "slots" / "slot-0a1b2c3d4e", {"test_shop.py": """\
        import unittest

        class Cart(unittest.TestCase):
            def test_total(self):
                self.assertEqual(2 + 2, 5)

            def test_empty(self):
                raise KeyError("basket")

            def test_fine(self):
                pass
        """})
    result, _ = failing([sys.executable, "-m", "unittest"], slot, name="unittest")
    found = {f.message.split(" ")[0]: f for f in check_findings(result)}
    assert set(found) == {"test_total", "test_empty"}
    # The path is the checkout's own file, relative: the same wherever the slot is.
    assert (found["test_total"].path, found["test_total"].line) == ("test_shop.py", 5)
    assert found["test_total"].message.startswith("test_total (test_shop.Cart")
    assert found["test_total"].message.endswith("failed: AssertionError: 4 != 5")
    assert found["test_empty"].message.endswith("errored: KeyError: 'basket'")


def test_a_judged_check_shows_only_what_the_branch_newly_fails(tmp_path: Path) -> None:
    write(tmp_path / "base", {"test_a.py": "def test_old():\n    assert False\n"})
    write(tmp_path / "branch", {"test_a.py": "def test_old():\n    assert False\n\ndef test_new():\n    assert 0\n"})
    argv = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider"]
    judged = judge(*failing(argv, tmp_path / "branch"), *failing(argv, tmp_path / "base"))
    assert judged.status == "fail"
    assert [(f.path, f.message) for f in check_findings(judged)] == [("test_a.py", "test_new failed: assert 0")]


def test_new_type_errors_keep_their_file_and_line(tmp_path: Path) -> None:
    """mypy's errors are compared without line numbers, and shown with them."""
    write(tmp_path / "base", {"m.py": "def f() -> int:\n    return 'x'\n"})
    write(tmp_path / "branch", {"m.py": "import os\n\ndef f() -> int:\n    return 'x'\n\ny: int = z\n"})
    argv = [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir=/dev/null", "m.py"]
    judged = judge(*failing(argv, tmp_path / "branch", "mypy"), *failing(argv, tmp_path / "base", "mypy"))
    assert judged.note == "1 new failure beyond the base's 1"
    assert [(f.path, f.line, f.message) for f in check_findings(judged)] == [
        ("m.py", 6, 'Name "z" is not defined  [name-defined]')]


def test_an_unknown_tools_new_lines_are_shown_as_it_printed_them(tmp_path: Path) -> None:
    base = failing([sys.executable, "-c", "raise SystemExit('3 files unformatted')"], tmp_path, "fmt")
    branch = failing([sys.executable, "-c", "print('5 files unformatted'); raise SystemExit('line 12 too long')"],
                     tmp_path, "fmt")
    assert [f.message for f in check_findings(judge(*branch, *base))] == ["line 12 too long"]


def test_output_that_names_nothing_gives_the_note_and_last_line(tmp_path: Path) -> None:
    result, _ = failing([sys.executable, "-c", f"print('starting'); print('leaked {KEY}'); raise SystemExit(3)"],
                        tmp_path, name="build")
    [finding] = check_findings(result)
    assert (finding.check, finding.path, finding.line) == ("build", None, None)
    # Whatever a check printed, a key in it is shown only as the secrets check previews one.
    assert finding.message.startswith("exit 3: leaked AKIA") and KEY not in finding.message
    assert check_findings(CheckResult("x", "tests", "pass", 0.1)) == []


def test_builtin_findings_of_a_real_gate(repo: Repo) -> None:
    repo.write("cfg.py", f'AWS_KEY = "{KEY}"\n')
    repo.commit_all("a key")
    res = wswarm(repo.path, "gate", "--ref", "HEAD", "--base", "HEAD~1", "--json")
    assert res.returncode == 1, res.stderr
    report = GateReport.from_json(res.stdout)
    [secret] = findings(report)
    assert (secret.check, secret.path, secret.line) == ("secrets", "cfg.py", 1)
    assert secret.message.startswith("possible AWS access key id: AKIA") and KEY not in secret.message
    assert str(secret) == f"cfg.py:1: {secret.message}"


# --- end to end: a run whose tasks fail the gate --------------------------------------------------

LEAKY_OR_BROKEN = """
tid = os.environ["WSWARM_TASK_ID"]
if tid == "leak":
    Path("cfg.py").write_text('AWS_KEY = "' + "AKIA" + "Z7Q2LMN4VWX8TR3P" + '"\\n')
    Path("notes.txt").write_text("not declared\\n")
else:
    Path("test_new.py").write_text(
        "import unittest\\n\\n\\nclass New(unittest.TestCase):\\n    def test_sum(self):\\n"
        "        self.assertEqual(sum([1, 2]), 4)\\n")
"""


def test_findings_reach_logs_status_pr_and_dashboard(repo: Repo, agent_script: Any) -> None:
    repo.write("test_base.py", "import unittest\n\n\nclass Base(unittest.TestCase):\n    def test_ok(self):\n"
                               "        pass\n")
    repo.write("wswarm.toml", f'[[gate.checks]]\nname = "unittest"\nkind = "tests"\n'
                              f'run = "{sys.executable} -m unittest"\n')
    repo.commit_all("a passing test suite")
    write_plan(repo.path / "plan.json", [{"id": "leak", "description": "configure", "files": ["cfg.py"]},
                                         {"id": "broken", "description": "add a test"}])
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent_script(LEAKY_OR_BROKEN),
                 "--max-attempts", "1")
    assert res.returncode == 1, res.stderr

    # status --json: the last attempt's findings per task
    st = wswarm(repo.path, "status", "--json").json()
    tasks = {t["id"]: t for t in st["tasks"]}
    assert tasks["leak"]["status"] == tasks["broken"]["status"] == "failed"
    leak = tasks["leak"]["findings"]
    assert leak[0]["check"] == "secrets" and (leak[0]["path"], leak[0]["line"]) == ("cfg.py", 1)
    assert leak[0]["message"].startswith("possible AWS access key id: AKIA") and KEY not in json.dumps(st)
    assert leak[0]["status"] == "fail"
    assert {"check": "declared-files", "path": "notes.txt", "line": None,
            "message": "changed outside the task's declared files", "status": "warn"} in leak
    [broken] = tasks["broken"]["findings"]
    assert (broken["check"], broken["path"], broken["line"]) == ("unittest", "test_new.py", 6)
    assert broken["message"].startswith("test_sum (test_new.New") and broken["message"].endswith(
        "failed: AssertionError: 3 != 4")
    assert tasks["leak"]["session_id"] is None and tasks["leak"]["resume"] is None   # a command agent has none

    # logs: each attempt's gate verdict with its findings, after the attempt's logs
    logs = wswarm(repo.path, "logs", "leak")
    assert logs.returncode == 0, logs.stderr
    gate = logs.stdout.split("==> attempt 1: gate <==\n")[1]
    assert gate.startswith("gate FAILED: secrets ✗")
    assert "  secrets: cfg.py:1: possible AWS access key id: AKIA" in gate
    assert "  declared-files: notes.txt: changed outside the task's declared files" in gate
    logs = wswarm(repo.path, "logs", "broken").stdout
    assert "  unittest: test_new.py:6: test_sum (test_new.New" in logs

    # status: the failed tasks' findings under the board
    board = wswarm(repo.path, "status", env={"COLUMNS": "200"}).stdout
    assert "✗ leak secrets: cfg.py:1: possible AWS access key id: AKIA" in board
    assert "! leak declared-files: notes.txt: changed outside the task's declared files" in board
    assert "✗ broken unittest: test_new.py:6: test_sum" in board

    # the PR body: under the task that was not merged, escaped
    body = wswarm(repo.path, "pr").stdout
    assert "  - secrets `cfg.py:1`: possible AWS access key id: AKIA" in body
    assert "  - declared-files (warning) `notes.txt`: changed outside the task's declared files" in body
    assert "  - unittest `test_new.py:6`: test\\_sum (test\\_new.New" in body
    assert KEY not in body

    # the dashboard's attempt view
    store = RunStore.open(repo.state_dir / "runs" / st["run"])
    try:
        [task] = tasks_data(store, "leak")
    finally:
        store.close()
    assert task["attempts"][0]["findings"] == leak


# --- the Claude Code session ----------------------------------------------------------------------

FAKE_CLAUDE = """\
#!{python}
# Speaks the Claude Code CLI's stream-json: a session, then a result. Writes a key, so the gate fails.
import json, os, sys
from pathlib import Path
sys.stdin.readline()   # the prompt: one stream-json line; stdin stays open for news
Path("cfg.py").write_text('AWS_KEY = "' + "AKIA" + "Z7Q2LMN4VWX8TR3P" + '"\\n')
session = "{session}"
print(json.dumps({{"type": "system", "subtype": "init", "session_id": session, "model": "claude-sonnet-4-5",
                  "cwd": os.getcwd(), "permissionMode": "default"}}), flush=True)
print(json.dumps({{"type": "result", "subtype": "success", "is_error": False, "result": "configured",
                  "session_id": session, "num_turns": 3, "total_cost_usd": 0.0125,
                  "usage": {{"input_tokens": 1200, "output_tokens": 300}}}}), flush=True)
"""


def test_the_claude_session_is_shown_with_a_resume_hint_for_a_failed_task(repo: Repo, tmp_path: Path) -> None:
    claude = tmp_path / "bin" / "claude"
    claude.parent.mkdir()
    claude.write_text(FAKE_CLAUDE.format(python=sys.executable, session=SESSION))
    claude.chmod(0o755)
    repo.write("wswarm.toml", f'[agents]\ndefault = "claude"\n\n[agents.claude]\nbinary = "{claude}"\n')
    repo.commit_all("claude")
    write_plan(repo.path / "plan.json", [{"id": "cfg", "description": "configure"}])
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--max-attempts", "1")
    assert res.returncode == 1, res.stderr

    st = wswarm(repo.path, "status", "--json").json()
    [task] = st["tasks"]
    assert task["status"] == "failed" and task["session_id"] == SESSION
    assert task["worktree"] and Path(task["worktree"]).is_dir()
    assert task["resume"] == f"cd {task['worktree']} && claude --resume {SESSION}"

    board = wswarm(repo.path, "status", env={"COLUMNS": "250"}).stdout
    assert "claude session" in board and SESSION in board
    assert f"resume cfg's Claude session: cd {task['worktree']} && claude --resume {SESSION}" in board

    body = wswarm(repo.path, "pr").stdout
    assert f"  - Claude Code session `{SESSION}`: to look at the conversation or go on with it, run " \
           f"`claude --resume {SESSION}` in the task's worktree" in body
    assert task["worktree"] not in body       # the PR is published; where the worktree is stays local

    store = RunStore.open(repo.state_dir / "runs" / st["run"])
    try:
        [data] = tasks_data(store, "cfg")
    finally:
        store.close()
    assert data["session_id"] == data["attempts"][0]["session_id"] == SESSION
    assert data["resume"] == task["resume"]

    # The live view (the terminal grid, the dashboard's view model) folds it from the events.
    run_dir = repo.state_dir / "runs" / st["run"]
    store = RunStore.open(run_dir)
    try:
        feed = Feed.for_store(store)
    finally:
        store.close()
    feed.apply_all(EventTail(run_dir / "events.jsonl").read())
    view = feed.view(live=False)
    assert view["tasks"][0]["session_id"] == SESSION
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(render(view, height=30))
    assert f"✗ cfg failed (claude --resume {SESSION}): gate FAILED: secrets ✗" in console.export_text()
