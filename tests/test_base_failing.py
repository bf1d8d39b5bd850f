"""A check that fails on the base itself is said once (a `base-failing` event, its line in the live
view and the PR body's warnings), with the hint to configure it when it was detected."""

from __future__ import annotations

import json
from typing import Any

from conftest import Repo, unavailable, wswarm, write_plan
from worktree_swarm.config import CheckConfig
from worktree_swarm.gate.baseline import BaseFailing
from worktree_swarm.gate.detect import detect_checks
from worktree_swarm.gate.report import CheckResult
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.ui.describe import describe
from worktree_swarm.ui.live import Board

# A src-layout project whose tests cannot import it when run from the checkout: every run of the
# detected pytest fails, on the base as on every branch.
PROJECT = {
    "pyproject.toml": '[project]\nname = "pkg"\nversion = "0"\n',
    "src/pkg/__init__.py": "VALUE = 1\n",
    "tests/conftest.py": "from pkg import VALUE\n",
    "tests/test_value.py": "from pkg import VALUE\n\n\ndef test_value():\n    assert VALUE == 1\n",
}


def test_a_detected_check_failing_on_the_base_is_said_once(repo: Repo, agent_script: Any) -> None:
    for rel, text in PROJECT.items():
        repo.write(rel, text)
    repo.commit_all("a src-layout project whose tests cannot import it")
    if not any(d.check.name == "pytest" and d.installed for d in detect_checks(repo.path)):
        unavailable("pytest is not importable by python3, so it is not detected")
    write_plan(repo.path / "plan.json", [{"id": "one", "description": "a module"},
                                         {"id": "two", "description": "another", "dependencies": ["one"]}])
    agent = agent_script('Path("src/pkg", os.environ["WSWARM_TASK_ID"] + ".py").write_text("X = 1\\n")\n')
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent, "--max-attempts", "1")
    st = wswarm(repo.path, "status", "--json").json()
    # Both tasks fail exactly as the base does: merged, not charged.
    assert [t["status"] for t in st["tasks"]] == ["merged", "merged"], res.stderr
    run_dir = repo.state_dir / "runs" / st["run"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    told = [e for e in events if e["kind"] == "base-failing"]
    assert len(told) == 1, told          # the second task's base failed too; it is said once
    assert told[0]["check"] == "pytest" and told[0]["detected"] is True and told[0]["failures"] >= 1
    line = describe(told[0])
    assert line.startswith("the detected check pytest fails on the base itself") and "[[gate.checks]]" in line
    assert "base-failing" in res.stderr and "check=pytest" in res.stderr   # the plain progress lines
    store = RunStore.open(run_dir)
    try:
        board = Board(store)
        board.poll()
        assert line in [e["text"] for e in board.view()["recent"]]          # the live grid's line
    finally:
        store.close()
    pr = (run_dir / "pr.md").read_text()
    warnings = pr.split("## Warnings", 1)[1]
    assert "The detected check pytest fails on the base itself" in warnings and "gate.checks" in warnings


def test_said_once_per_check_only_when_the_base_fails() -> None:
    told: list[dict[str, Any]] = []
    watch = BaseFailing(lambda kind, **data: told.append({"kind": kind, **data}))
    configured = CheckConfig("lint", "ruff check", kind="lint")
    fail = CheckResult("lint", "lint", "fail", 0.1, note="exit 1")
    watch.saw(configured, CheckResult("lint", "lint", "pass", 0.1), "", "a" * 40)
    assert told == []
    output = "x.py:1:1: F401 unused import\ny.py:2:1: E501 line too long\n"
    watch.saw(configured, fail, output, "a" * 40)
    watch.saw(configured, fail, output, "b" * 40)
    assert len(told) == 1 and told[0]["detected"] is False and told[0]["failures"] == 2
    # A configured check is the user's own: no hint to configure it.
    assert describe(told[0]) == ("the check lint fails on the base itself (aaaaaaaaaaaa, 2 failures): tasks are "
                                 "judged only on failures beyond those")
