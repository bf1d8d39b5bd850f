"""The PR body is pure rendering: tested from state rows, without a repository."""

from __future__ import annotations

import dataclasses
import json

from worktree_swarm.gate.report import CheckResult, GateReport
from worktree_swarm.commands.pr import clean_run_ratio, pr_title, render_pr
from worktree_swarm.store.run_store import AttemptRow, RunRow, TaskRow
from worktree_swarm.util.types import RunId

PLAN = [
    {"id": "a", "type": "backend", "description": "Add the API", "dependencies": [], "files": []},
    {"id": "b", "type": "testing", "description": "Test the API", "dependencies": ["a"], "files": []},
    {"id": "c", "type": "docs", "description": "Document it", "dependencies": ["b"], "files": []},
    {"id": "d", "type": "frontend", "description": "Style it", "dependencies": [], "files": []},
]
PASSED = GateReport((CheckResult("tests", "tests", "pass", 1.5), CheckResult("secrets", "builtin", "pass", 0.0)))


def run_row(cost: float = 0.0) -> RunRow:
    return RunRow(id=RunId("20260101-000000-abcd"), state="finished", base="f" * 40, base_ref="main",
                  integration_branch="wswarm/20260101-000000-abcd/integration", plan=json.dumps(PLAN),
                  options={"title": "ship the API"}, created=0.0, updated=0.0, finished=1.0, cost_usd=cost,
                  merge_gate=None)


def task(id: str, status: str, attempts: int, reason: str | None = None, summary: str | None = None) -> TaskRow:
    return TaskRow(id=id, position=0, status=status, attempts=attempts, branch=f"wswarm/r/tasks/{id}/{attempts}",
                   reason=reason, summary=summary, merge_commit=None, worktree=None, cost_usd=0.0, updated=0.0)


def attempt(task_id: str, n: int, outcome: str, reason: str | None = None, files: int = 1,
            added: int = 3, removed: int = 1) -> AttemptRow:
    return AttemptRow(task_id=task_id, n=n, outcome=outcome, branch="x", start="s", head="h", started=0.0,
                      finished=1.0, reason=reason, gate=PASSED.to_json() if outcome == "merged" else None,
                      files=json.dumps([[f"f{i}.py", added, removed] for i in range(files)]),
                      added=added * files, removed=removed * files, cost_usd=0.0)


TASKS = [task("a", "merged", 2, summary="added /api"), task("b", "failed", 3, reason="gate FAILED: tests ✗"),
         task("c", "blocked", 0, reason="depends on 'b', which failed"), task("d", "merged", 1)]
ATTEMPTS = [attempt("a", 1, "conflict", "merge conflict in app.py"), attempt("a", 2, "merged", files=2),
            attempt("b", 1, "gate-failed", "gate FAILED: tests ✗"), attempt("b", 2, "gate-failed", "gate FAILED"),
            attempt("b", 3, "gate-failed", "gate FAILED: tests ✗"), attempt("d", 1, "merged")]


def test_clean_run_ratio_counts_first_attempt_merges_over_all_tasks() -> None:
    assert clean_run_ratio(TASKS, ATTEMPTS) == (1, 4)


def test_title_names_the_goal_and_the_count() -> None:
    assert pr_title(run_row(), TASKS) == "wswarm: ship the API (2/4 tasks)"


def test_body_has_table_gate_requeues_and_failures() -> None:
    body = render_pr(run_row(), TASKS, ATTEMPTS)
    assert body.startswith("# wswarm: ship the API (2/4 tasks)\n")
    assert "2 of 4 tasks merged; clean-run ratio **1/4** (25%)" in body
    assert "| `a` | backend | ✅ merged | 2 | 2 | +6 −2 |" in body
    assert "| `b` | testing | ❌ failed | 3 | 1 | +3 −1 |" in body
    assert "| `c` | docs | ⛔ blocked | 0 | 0 | +0 −0 |" in body
    assert "- `a`: gate passed: tests ✓ 1.5s, secrets ✓" in body
    assert "- `a` attempt 1: conflict — merge conflict in app.py" in body
    assert "- `b` attempt 1: gate-failed — gate FAILED: tests ✗" in body
    # The failing attempt that ended the task is reported under "Not merged", not as a re-queue.
    assert "`b` attempt 3" not in body
    assert "- `b` failed: gate FAILED: tests ✗ (kept for inspection: `wswarm/r/tasks/b/3`)" in body
    assert "- `c` blocked: depends on 'b', which failed" in body
    assert "added /api" in body
    assert "Model spend" not in body


def test_spend_is_shown_when_there_was_any() -> None:
    assert "spend" not in render_pr(run_row(cost=0.0), TASKS, ATTEMPTS)
    # Only a planner spent: the whole sum is planning, and the table gains a cost column.
    body = render_pr(run_row(cost=1.25), TASKS, ATTEMPTS)
    assert "Model spend: **$1.25** (planning $1.25)." in body
    assert "| task | type | status | attempts | files | lines | cost |" in body


def test_spend_per_task_and_tokens_come_from_the_attempts() -> None:
    tasks = [dataclasses.replace(t, cost_usd=0.5 if t.id == "a" else 0.0) for t in TASKS]
    usage = json.dumps({"cost_usd": 0.5, "input_tokens": 12000, "output_tokens": 3400, "turns": 7})
    attempts = [dataclasses.replace(a, usage=usage, cost_usd=0.25) if a.task_id == "a" else a for a in ATTEMPTS]
    body = render_pr(run_row(cost=0.5), tasks, attempts)
    assert "Model spend: **$0.50** — 24,000 input and 6,800 output tokens over 2 attempt(s)." in body
    assert "planning" not in body
    assert "| `a` | backend | ✅ merged | 2 | 2 | +6 −2 | $0.50 |" in body
    assert "| `d` | frontend | ✅ merged | 1 | 1 | +3 −1 | $0.00 |" in body


def test_gate_report_render_and_round_trip() -> None:
    report = GateReport((CheckResult("tests", "tests", "fail", 2.0, "E   assert 1 == 2", "exit 1"),
                         CheckResult("lint", "lint", "skipped", 0.0, note="no changed file matches *.py"),
                         CheckResult("declared-files", "builtin", "warn", 0.0, "x.py: outside", "1 finding")))
    assert not report.passed
    assert report.summary() == "gate FAILED: tests ✗ 2.0s, lint –, declared-files !"
    text = report.render()
    assert "--- tests (fail) ---\nE   assert 1 == 2" in text
    assert "--- declared-files (warn) ---\nx.py: outside" in text
    assert GateReport.from_json(report.to_json()) == report


def test_findings_and_sessions_are_listed_escaped() -> None:
    """What each failing or warning check found, under the attempt or task it explains; agent text
    (a test name, a message) is escaped, so it adds no structure to the body."""
    failed = GateReport((CheckResult("tests", "tests", "fail", 2.0, "FAILED tests/test_ui.py::test_<b>bold</b> - "
                                     "assert '| x |' == '# y'\n1 failed in 0.1s", "exit 1"),
                         CheckResult("secrets", "builtin", "pass", 0.0)))
    warned = GateReport((CheckResult("tests", "tests", "pass", 1.0),
                         CheckResult("declared-files", "builtin", "warn", 0.0, "docs/x.md: changed outside the "
                                     "task's declared files", "1 finding")))
    session = json.dumps({"cost_usd": 0.5, "session_id": "abc-123", "input_tokens": 10, "output_tokens": 5})
    attempts = [dataclasses.replace(ATTEMPTS[0], gate=failed.to_json(), usage=session),
                dataclasses.replace(ATTEMPTS[1], gate=warned.to_json(), usage=session.replace("abc", "def")),
                *ATTEMPTS[2:4], dataclasses.replace(ATTEMPTS[4], gate=failed.to_json(), usage=session)]
    body = render_pr(run_row(), TASKS, attempts + ATTEMPTS[5:])
    # Re-queued: the attempt's findings and its session.
    assert ("- `a` attempt 1: conflict — merge conflict in app.py\n"
            "  - tests `tests/test_ui.py`: test\\_\\<b>bold\\</b> failed: assert '\\| x \\|' == '\\# y'\n"
            "  - Claude Code session `abc-123`\n") in body
    # Merged with a warning: under its gate line; its session under what it did.
    assert ("- `a`: gate passed: tests ✓ 1.0s, declared-files !\n"
            "  - declared-files (warning) `docs/x.md`: changed outside the task's declared files\n") in body
    assert "### `a` — Add the API\n\nClaude Code session `def-123`.\n" in body
    # Failed: the last attempt's findings and how to reopen its conversation.
    assert ("- `b` failed: gate FAILED: tests ✗ (kept for inspection: `wswarm/r/tasks/b/3`)\n"
            "  - tests `tests/test_ui.py`: test\\_\\<b>bold\\</b> failed: assert '\\| x \\|' == '\\# y'\n"
            "  - Claude Code session `abc-123`: to look at the conversation or go on with it, run "
            "`claude --resume abc-123` in the task's worktree (`wswarm status` shows where it is)\n") in body
    assert "_<b>" not in body and "bold</b>" not in body      # every `<` escaped: no HTML
