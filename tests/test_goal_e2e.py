"""A whole `wswarm start "GOAL"`: the plan from the (fake) model, the tasks carried out by the built-in
agent over the real SDK, the gate, the merge train, and the PR body with what it all cost."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import Repo, wswarm, write_plan
from tests.fakeapi import FakeAnthropic, text, tool_use

CALC = "def add(a, b):\n    return a + b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
PLAN = [
    {"id": "subtract", "type": "backend", "description": "Add a subtract function in calc_sub.py",
     "dependencies": [], "files": ["calc_sub.py", "test_sub.py"]},
    {"id": "multiply", "type": "backend", "description": "Add a multiply function in calc_mul.py",
     "dependencies": [], "files": ["calc_mul.py"]},
    {"id": "readme", "type": "docs", "description": "Document the new functions in README.md",
     "dependencies": ["subtract", "multiply"], "files": ["README.md"]},
]
# Turns are priced: 200k input + 10k output tokens of a sonnet model = $0.60 + $0.15.
PRICEY = {"input_tokens": 200_000, "output_tokens": 10_000}


def configure(repo: Repo, **extra: str) -> None:
    repo.write("calc.py", CALC)
    repo.write("test_calc.py", TEST)
    repo.write("wswarm.toml", textwrap.dedent(f"""
        [agents]
        default = "anthropic"
        concurrency = 2
        [[gate.checks]]
        name = "tests"
        kind = "tests"
        run = "{sys.executable} -m pytest -q -p no:cacheprovider"
    """) + "".join(f"{k} = {v}\n" for k, v in extra.items()))
    repo.commit_all("a calculator with a test")


def script_agents(api: FakeAnthropic) -> None:
    # Each task's first turn is chosen by its description; each next turn by the tool results.
    api.on("Add a subtract function",
           tool_use("write", {"path": "calc_sub.py", "content": "def sub(a, b):\n    return a - b\n"}),
           tool_use("write", {"path": "test_sub.py",
                              "content": "from calc_sub import sub\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n"}),
           **PRICEY)
    api.on("created test_sub.py", tool_use("run", {"argv": [sys.executable, "-m", "pytest", "-q",
                                                            "-p", "no:cacheprovider", "test_sub.py"]}), **PRICEY)
    api.on("1 passed", text("Added sub() with a test; the test passes."), **PRICEY)
    api.on("Add a multiply function",
           tool_use("write", {"path": "calc_mul.py", "content": "def mul(a, b):\n    return a * b\n"}), **PRICEY)
    api.on("created calc_mul.py", text("Added mul()."), **PRICEY)
    api.on("Document the new functions",
           tool_use("search", {"pattern": "^def "}), **PRICEY)
    api.on("calc_mul.py", tool_use("write", {"path": "README.md", "content": "# calc\n\n`add`, `sub`, `mul`.\n"}),
           **PRICEY)
    api.on("overwrote README.md", text("Documented add, sub and mul."), **PRICEY)


def test_a_goal_becomes_a_merged_pull_request_with_its_cost(repo: Repo, fake_api: FakeAnthropic) -> None:
    configure(repo)
    fake_api.on("Add subtraction and multiplication", tool_use("submit_plan", {"tasks": PLAN}),
                input_tokens=100_000, output_tokens=20_000)      # an opus planner: $0.50 + $0.50
    script_agents(fake_api)

    res = wswarm(repo.path, "start", "Add subtraction and multiplication, documented", "--yes", timeout=240)

    assert res.returncode == 0, res.stdout + res.stderr
    status = wswarm(repo.path, "status", "--json").json()
    assert {t["id"]: t["status"] for t in status["tasks"]} == {"subtract": "merged", "multiply": "merged",
                                                               "readme": "merged"}
    branch = status["integration_branch"]
    assert repo.show(branch, "calc_sub.py").startswith("def sub(a, b)")
    assert repo.show(branch, "calc_mul.py").startswith("def mul(a, b)")
    assert "`sub`, `mul`" in repo.show(branch, "README.md")
    # Planner $1.00, then three turns of $0.75 for subtract, two for multiply, three for readme.
    costs = {t["id"]: t["cost_usd"] for t in status["tasks"]}
    assert costs == pytest.approx({"subtract": 2.25, "multiply": 1.5, "readme": 2.25})
    assert status["cost_usd"] == pytest.approx(7.0)

    # The docs task was told what its dependencies did, in their own words.
    readme_first = next(m for m in fake_api.messages() if "Document the new functions" in m.last_user_text())
    assert "Added sub() with a test" in readme_first.last_user_text()
    assert "Added mul()." in readme_first.last_user_text()
    # Its role is the docs role, and the model is the agents' default (not the planner's).
    assert "documentation" in json.dumps(readme_first.body["system"])
    # ... and it is sent once, as the system prompt, not again at the head of every conversation.
    assert "# Role" not in readme_first.last_user_text()
    assert readme_first.last_user_text().startswith("# Task `readme` (docs)")
    assert readme_first.body["model"] == "claude-sonnet-5-5"

    pr = Path(res.stdout.strip()).read_text()
    assert "Model spend: **$7.00** (planning $1.00)" in pr
    assert "| `subtract` | backend | ✅ merged | 1 | 2 | +7 −0 | $2.25 |" in pr
    assert "Added sub() with a test; the test passes." in pr
    assert "sk-ant-test" not in pr


def test_max_cost_lets_running_work_finish_and_starts_nothing_more(repo: Repo, fake_api: FakeAnthropic,
                                                                   tmp_path: Path) -> None:
    configure(repo)
    script_agents(fake_api)
    plan = write_plan(tmp_path / "plan.json", [dict(PLAN[0], dependencies=[]),
                                               dict(PLAN[2], dependencies=["subtract"])])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--max-cost", "1", timeout=240)

    assert res.returncode == 1, res.stdout + res.stderr
    status = wswarm(repo.path, "status", "--json").json()
    tasks = {t["id"]: t for t in status["tasks"]}
    # subtract was running when the limit was passed: it finished and merged ($2.25 of turns).
    assert tasks["subtract"]["status"] == "merged"
    assert tasks["readme"]["status"] == "blocked"
    assert tasks["readme"]["reason"] == ("not started: the run reached its spending limit "
                                         "($2.25 spent, --max-cost 1)")
    assert status["cost_usd"] == pytest.approx(2.25)
    assert not any("Document the new functions" in m.last_user_text() for m in fake_api.messages())
    run_dir = repo.state_dir / "runs" / status["run"]
    kinds = [json.loads(line)["kind"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert "spending-limit" in kinds
    assert "spending limit" in (run_dir / "pr.md").read_text()
