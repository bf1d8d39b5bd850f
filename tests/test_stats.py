"""What runs cost, end to end: real runs of scripted agents, `status --json` figures, the PR body's
"What it cost", `wswarm stats` over several runs, and the dashboard's figures."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from conftest import Repo, wswarm, write_plan
from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.ui.dashboard import Dashboard

# first: writes app/core.py once second has started (so both start from the base). second: attempt 1
# waits until first's change is on the integration branch, then writes the same line (its merge
# conflicts); attempt 2 starts from the new head and merges. broken: attempt 1 leaves a conflict
# marker (the built-in gate fails it); attempt 2 is clean. SHARED is a folder outside the worktrees.
AGENT = """
import subprocess
task, n, run = os.environ["WSWARM_TASK_ID"], int(os.environ["WSWARM_ATTEMPT"]), os.environ["WSWARM_RUN_ID"]
shared = Path(os.environ["SHARED"])
if task == "first":
    for _ in range(1200):
        if (shared / "second-started").exists():
            break
        time.sleep(0.05)
    Path("app/core.py").write_text("VALUE = 'first'\\n")
elif task == "second":
    if n == 1:
        (shared / "second-started").touch()
        ref = f"refs/heads/wswarm/{run}/integration:app/core.py"
        for _ in range(1200):
            shown = subprocess.run(["git", "show", ref], capture_output=True, text=True).stdout
            if "first" in shown:
                break
            time.sleep(0.05)
    Path("app/core.py").write_text("VALUE = 'second'\\n")
elif task == "broken":
    Path("notes.txt").write_text("<<<<<<< ours\\nnotes\\n" if n == 1 else "notes\\n")
else:
    Path(task + ".txt").write_text(task + "\\n")
"""
# Every agent starts at once, however loaded the machine running the tests is.
NO_LIMITS = "[limits]\nmax_load = 1000\nmin_free_memory_mb = 1\nmin_free_disk_mb = 1\n"


def task(tid: str) -> dict[str, Any]:
    return {"id": tid, "type": "general", "description": tid, "dependencies": [], "files": []}


def messy_run(repo: Repo, tmp_path: Path, agent_script: Any) -> dict[str, Any]:
    """A run with one conflict and one gate failure; its `status --json`."""
    if not (repo.path / "wswarm.toml").exists():
        repo.write("wswarm.toml", NO_LIMITS)
        repo.commit_all("no admission limits")
    shared = tmp_path / "shared"
    shared.mkdir()
    plan = write_plan(tmp_path / "messy.json", [task("first"), task("second"), task("broken")])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "3", "--agent-cmd", agent_script(AGENT),
                 env={"SHARED": str(shared)})
    assert res.returncode == 0, res.stderr
    status = wswarm(repo.path, "status", "--json")
    assert status.returncode == 0, status.stderr
    return status.json()


def test_a_run_with_a_conflict_and_a_gate_failure_says_what_it_cost(repo: Repo, tmp_path: Path,
                                                                    agent_script: Any) -> None:
    data = messy_run(repo, tmp_path, agent_script)
    attempts = {t["id"]: t["attempts"] for t in data["tasks"]}
    assert attempts == {"first": 1, "second": 2, "broken": 2}
    f = data["figures"]
    assert (f["tasks"], f["merged"], f["completed"], f["clean"], f["first_try"]) == (3, 3, True, False, 1)
    assert f["attempts"] == 5 and f["attempts_per_merged_task"] == 1.67 and f["in_flight"] == 0
    assert f["wasted"]["attempts"] == 2
    assert {c: n for c, n in f["wasted"]["by_cause"].items() if n} == {"conflict": 1, "gate": 1}
    assert f["wasted"]["seconds"] > 0 and f["wasted"]["cost_usd"] == 0
    assert f["interrupted"]["attempts"] == 0
    # second's conflict was forecast while it ran, or came unforecast: one or the other, never both
    forecast = f["forecast"]
    assert forecast["came_true"] + forecast["unforecast"] == 1 and forecast["did_not"] == 0

    body = Path(data["pr"]).read_text()
    section = body.split("## What it cost", 1)[1].split("\n## ", 1)[0]
    assert ("- Attempts: 5 for 3 tasks, 1.67 per merged task; 1 of 3 merged at their first attempt. "
            "The run completed: every task merged, some after wasted attempts.") in section
    assert "- Wasted attempts: 2 (1 conflict, 1 gate failed) — " in section
    assert "model spend" not in section   # command agents spend nothing


def test_stats_over_a_clean_and_a_messy_run(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    res = wswarm(repo.path, "stats")
    assert res.returncode == 0 and res.stdout == "" and res.stderr.startswith("no runs yet")

    plan = write_plan(tmp_path / "clean.json", [task("solo")])
    assert wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script(AGENT),
                  env={"SHARED": str(tmp_path)}).returncode == 0
    messy = messy_run(repo, tmp_path, agent_script)

    res = wswarm(repo.path, "stats", "--json")
    assert res.returncode == 0, res.stderr
    data = res.json()
    assert [(r["state"], r["figures"]["clean"], r["figures"]["completed"]) for r in data["runs"]] == [
        ("finished", True, True), ("finished", False, True)]
    assert data["runs"][1]["run"] == messy["run"] and data["runs"][1]["figures"] == messy["figures"]
    total = data["total"]
    assert (total["runs"], total["finished_runs"], total["clean_runs"], total["completed_runs"]) == (2, 2, 1, 2)
    assert total["clean_ratio"] == 0.5 and total["completed_ratio"] == 1.0
    assert (total["tasks"], total["merged"], total["attempts"], total["first_try"]) == (4, 4, 6, 2)
    assert total["wasted"]["attempts"] == 2 and total["attempts_per_merged_task"] == 1.5

    text = wswarm(repo.path, "stats")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split()[:4] == ["RUN", "MERGED", "ATT/TASK", "WASTED"]
    clean_row, messy_row, total_row = lines[1:4]
    assert clean_row.split()[1:4] == ["1/1", "1.00", "0"] and clean_row.endswith("clean")
    assert messy_row.split()[1:7] == ["3/3", "1.67", "2", "(1", "conflict,", "1"]
    assert messy_row.endswith("completed")
    assert total_row.startswith("total (2 runs)") and total_row.endswith("1/2 clean")
    assert lines[-1].startswith("1 of 2 finished runs completed cleanly (50%), 2 completed (100%)")


def test_the_dashboard_serves_the_runs_figures(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    data = messy_run(repo, tmp_path, agent_script)
    server = Dashboard(GitRepo.discover(repo.path), run=data["run"], port=0)
    import threading

    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"{server.url}api/runs/{data['run']}/figures", timeout=10) as res:
            figures = json.loads(res.read())
        with urllib.request.urlopen(f"{server.url}api/runs/{data['run']}/status", timeout=10) as res:
            status = json.loads(res.read())
    finally:
        server.stop()
        thread.join(10)
    assert figures == data["figures"] == status["figures"]
    assert figures["wasted"]["by_cause"]["conflict"] == 1
