"""Overlap-aware scheduling end to end: real git, real command agents, the real command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Repo, wswarm, write_plan

# One script plays every task; WSWARM_TASK_ID says which. SHARED is a folder outside the worktrees.
AGENT = """
shared = Path(os.environ["SHARED"])
task = os.environ["WSWARM_TASK_ID"]
if task == "adds-file":
    # Finish only once the other task has failed for want of this file, then take a while longer:
    # a retry that starts again from the same head at once fails again, every time.
    for _ in range(600):
        if (shared / "needs-failed").exists():
            break
        time.sleep(0.05)
    time.sleep(1.5)
    Path("lib.py").write_text("X = 1\\n")
elif task == "needs-file":
    if not Path("lib.py").exists():
        (shared / "needs-failed").touch()
        print("patch does not apply: lib.py does not exist")
        sys.exit(1)
    Path("use.py").write_text("from lib import X\\n")
else:
    name = task + ".txt"
    Path(os.environ.get("TARGET", name)).write_text(task + "\\n")
"""


def events(repo: Repo) -> list[dict[str, Any]]:
    [run] = (repo.state_dir / "runs").iterdir()
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def status(repo: Repo) -> dict[str, Any]:
    return {t["id"]: t for t in wswarm(repo.path, "status", "--json").json()["tasks"]}


def test_a_task_that_needs_another_running_tasks_file_waits_for_it_instead_of_burning_attempts(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "adds-file", "type": "general", "description": "add lib.py", "dependencies": [], "files": []},
        {"id": "needs-file", "type": "general", "description": "use lib.py", "dependencies": [], "files": []}])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "2", "--max-attempts", "3",
                 "--agent-cmd", agent_script(AGENT), env={"SHARED": str(shared)})

    assert res.returncode == 0, res.stderr
    tasks = status(repo)
    assert tasks["adds-file"]["status"] == tasks["needs-file"]["status"] == "merged"
    assert tasks["needs-file"]["attempts"] == 2
    held = [e for e in events(repo) if e["kind"] == "held"]
    assert [(e["task"], e["waiting_for"]) for e in held] == [("needs-file", "adds-file")]
    assert "failed while this task ran" in held[0]["reason"]
    # the retry started from the head that holds lib.py
    started = [e for e in events(repo) if e["kind"] == "attempt-started" and e["task"] == "needs-file"]
    assert repo.git("cat-file", "-t", f"{started[1]['start']}:lib.py") == "blob"


def test_serialize_holds_back_a_task_that_declares_the_same_files(repo: Repo, tmp_path: Path,
                                                                  agent_script: Any) -> None:
    repo.write("wswarm.toml", "[scheduler]\noverlap = \"serialize\"\n")
    repo.commit_all("config")
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "one", "type": "general", "description": "d", "dependencies": [], "files": ["pricing/*.py"]},
        {"id": "two", "type": "general", "description": "d", "dependencies": [], "files": ["pricing/cart.py"]},
        {"id": "free", "type": "general", "description": "d", "dependencies": [], "files": ["docs/"]}])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "3",
                 "--agent-cmd", agent_script(AGENT), env={"SHARED": str(tmp_path)})

    assert res.returncode == 0, res.stderr
    held = [e for e in events(repo) if e["kind"] == "held"]
    assert [(e["task"], e["waiting_for"], e["reason"]) for e in held] == [
        ("two", "one", "both change 'pricing/cart.py' / 'pricing/*.py'")]
    kinds = [(e["kind"], e.get("task")) for e in events(repo) if e["kind"] in ("attempt-started", "merged")]
    # two started only after one merged; free ran beside one
    assert kinds.index(("attempt-started", "two")) > kinds.index(("merged", "one"))
    assert kinds.index(("attempt-started", "free")) < kinds.index(("merged", "one"))
    assert "held" in res.stderr and "waiting_for=one" in res.stderr


def test_a_conflicts_feedback_names_the_task_it_collided_with_and_its_change(repo: Repo, tmp_path: Path,
                                                                            agent_script: Any) -> None:
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "first", "type": "general", "description": "d", "dependencies": [], "files": []},
        {"id": "second", "type": "general", "description": "d", "dependencies": [], "files": []}])
    # Both write the same file; the scheduler knows no files, so both run at once and one conflicts.
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "2", "--agent-cmd", agent_script(AGENT),
                 env={"SHARED": str(tmp_path), "TARGET": "app/core.py"})

    assert res.returncode == 0, res.stderr
    tasks = status(repo)
    loser = next(t for t in tasks.values() if t["attempts"] == 2)
    winner = next(t for t in tasks.values() if t["attempts"] == 1)
    [run] = (repo.state_dir / "runs").iterdir()
    feedback = (run / "attempts" / loser["id"] / "2" / "feedback.txt").read_text()
    assert f"merged meanwhile by '{winner['id']}'" in feedback
    assert f"'{winner['id']}' (app/core.py):" in feedback and f"+{winner['id']}" in feedback


MERGING_AGENT = """
import subprocess
task = os.environ["WSWARM_TASK_ID"]
if task == "late":
    news = Path(os.environ["WSWARM_NEWS"])
    for _ in range(600):
        items = [json.loads(line) for line in news.read_text().splitlines()]
        heads = [i["head"] for i in items if i.get("head")]
        if heads:
            break
        time.sleep(0.05)
    # Bring the merged work in, as the news suggests, then do this task's own change.
    subprocess.run(["git", "merge", "-q", "--no-edit", heads[-1]], check=True)
Path(task + ".txt").write_text(task + "\\n")
"""


def test_a_branch_that_merged_the_integration_head_mid_run_is_judged_on_its_own_change(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "early", "type": "general", "description": "d", "dependencies": [], "files": []},
        {"id": "late", "type": "general", "description": "d", "dependencies": [], "files": []}])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "2", "--agent-cmd", agent_script(MERGING_AGENT))

    assert res.returncode == 0, res.stderr
    tasks = status(repo)
    assert tasks["early"]["status"] == tasks["late"]["status"] == "merged"
    assert tasks["late"]["attempts"] == 1
    log = events(repo)
    [news] = [e for e in log if e["kind"] == "news"]
    assert (news["task"], news["about"]) == ("late", "early")
    [merged] = [e for e in log if e["kind"] == "merged" and e["task"] == "late"]
    assert merged["files"] == ["late.txt"]                 # not early's file, which it merged in
    branch = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    assert repo.show(branch, "early.txt") == "early" and repo.show(branch, "late.txt") == "late"


REPLAY_AGENT = """
import subprocess
patch = Path(os.environ["PATCHES"]) / (os.environ["WSWARM_TASK_ID"] + ".diff")
# Apply the upstream change to whatever this worktree holds, as a replay's agent does.
res = subprocess.run(["git", "apply", str(patch)], capture_output=True, text=True)
print(res.stderr)
sys.exit(res.returncode)
"""


CHAIN = [("c1", "lib.py", "A = 1\n"), ("c2", "lib.py", "A = 1\nB = A\n"), ("c3", "lib.py", "A = 1\nB = A\nC = B\n"),
         ("i1", "one.py", "ONE = 1\n"), ("i2", "two.py", "TWO = 2\n"), ("i3", "app/core.py", "VALUE = 3\n")]
LONG_CHAIN = [(f"p{i}", "lib.py", "".join(f"V{j} = {j}\n" for j in range(1, i + 1))) for i in range(1, 7)] + [
    ("q1", "one.py", "ONE = 1\n"), ("q2", "two.py", "TWO = 2\n")]


@pytest.mark.parametrize(("steps", "order", "agents"), [
    (CHAIN, ["c3", "c2", "c1", "i1", "i2", "i3"], "2"),
    (LONG_CHAIN, [name for name, _, _ in LONG_CHAIN], "4"),
], ids=["a chain started in reverse", "a chain of six in upstream order"])
def test_a_replay_of_upstream_history_comes_out_as_upstream(repo: Repo, tmp_path: Path, agent_script: Any,
                                                            steps: list[tuple[str, str, str]], order: list[str],
                                                            agents: str) -> None:
    """Upstream commits replayed as tasks from the same old base, no declared dependencies, three
    attempts each: some form a chain (each patch applies only on top of the one before)."""
    patches = tmp_path / "patches"
    patches.mkdir()
    repo.write("lib.py", "A = 0\n")
    base = repo.commit_all("lib")
    previous = base
    for name, path, text in steps:
        repo.write(path, text)
        head = repo.commit_all(name)
        (patches / f"{name}.diff").write_text(repo.git("diff", "--binary", previous, head) + "\n")
        previous = head
    upstream = repo.git("rev-parse", "HEAD^{tree}")
    repo.git("reset", "-q", "--hard", base)
    plan = write_plan(tmp_path / "plan.json", [{"id": t, "type": "general", "description": f"replay {t}",
                                                 "dependencies": [], "files": []} for t in order])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", agents, "--max-attempts", "3",
                 "--agent-cmd", agent_script(REPLAY_AGENT), env={"PATCHES": str(patches)})

    assert res.returncode == 0, res.stderr
    branch = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    assert repo.git("rev-parse", f"{branch}^{{tree}}") == upstream
