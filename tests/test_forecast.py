"""Conflict forecasts: snapshots of running worktrees merged in memory, real git throughout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Repo, git, wswarm, write_plan
from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.swarm.forecast import HEAD, Forecast, forecast, snapshot
from worktree_swarm.util.types import Sha


def worktree(repo: Repo, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    repo.git("worktree", "add", "-q", "-b", name, str(path))
    return path


def test_a_snapshot_holds_the_worktrees_files_and_touches_neither_its_index_nor_its_files(
        repo: Repo, tmp_path: Path) -> None:
    wt = worktree(repo, tmp_path, "agent")
    (wt / "app" / "core.py").write_text("VALUE = 2\n")
    (wt / "new.py").write_text("NEW = 1\n")
    (wt / "README.md").unlink()
    git(wt, "add", "new.py")                      # the agent's own index holds part of its work
    index = Path(git(wt, "rev-parse", "--path-format=absolute", "--git-path", "index"))
    before = (index.read_bytes(), git(wt, "status", "--porcelain"))

    snap = snapshot(GitRepo.discover(repo.path), wt)

    assert snap is not None
    assert (index.read_bytes(), git(wt, "status", "--porcelain")) == before
    assert git(wt, "show", f"{snap}:app/core.py") == "VALUE = 2"
    assert git(wt, "show", f"{snap}:new.py") == "NEW = 1"
    assert git(wt, "ls-tree", "--name-only", snap, "README.md") == ""
    assert git(wt, "rev-parse", f"{snap}^") == git(wt, "rev-parse", "HEAD")
    assert git(wt, "rev-parse", "HEAD") == repo.git("rev-parse", "main")      # no ref moved


def test_no_snapshot_of_a_worktree_whose_git_link_was_rewritten_or_that_holds_a_repository(
        repo: Repo, tmp_path: Path) -> None:
    r = GitRepo.discover(repo.path)
    wt = worktree(repo, tmp_path, "agent")
    nested = wt / "vendor" / "x"
    nested.mkdir(parents=True)
    git(nested, "init", "-q")
    assert snapshot(r, wt) is None
    other = worktree(repo, tmp_path, "other")
    (other / ".git").write_text(f"gitdir: {repo.path / '.git'}\n")      # at the user's own git dir
    assert snapshot(r, other) is None


def test_forecast_finds_conflicts_with_the_head_and_between_running_attempts_and_nothing_else(
        repo: Repo, tmp_path: Path) -> None:
    r = GitRepo.discover(repo.path)
    base = Sha(repo.git("rev-parse", "HEAD"))
    a, b, c = (worktree(repo, tmp_path, n) for n in "abc")
    (a / "app" / "core.py").write_text("VALUE = 'a'\n")
    (b / "app" / "core.py").write_text("VALUE = 'b'\n")
    (c / "other.py").write_text("OTHER = 1\n")
    snaps = {(name, 1): (base, snapshot(r, wt)) for name, wt in (("a", a), ("b", b), ("c", c))}
    assert all(s is not None for _, s in snaps.values())

    result = forecast(r, base, {k: (start, Sha(str(s))) for k, (start, s) in snaps.items()})

    assert result.touched == {("a", 1): ["app/core.py"], ("b", 1): ["app/core.py"], ("c", 1): ["other.py"]}
    assert sorted((f.key, f.other, f.paths) for f in result.forecasts) == [
        (("a", 1), "b", ("app/core.py",)), (("b", 1), "a", ("app/core.py",))]
    # work merged meanwhile that a running attempt would collide with
    repo.write("app/core.py", "VALUE = 'merged'\n")
    head = Sha(repo.commit_all("merged work"))
    later = forecast(r, head, {("c", 1): (base, Sha(str(snaps[("c", 1)][1]))),
                               ("a", 1): (base, Sha(str(snaps[("a", 1)][1])))})
    assert [(f.key, f.other) for f in later.forecasts] == [(("a", 1), HEAD)]
    assert isinstance(later.forecasts[0], Forecast) and later.forecasts[0].paths == ("app/core.py",)


AGENT = """
events = Path(os.environ["EVENTS"])
task = os.environ["WSWARM_TASK_ID"]
Path("app/core.py").write_text(f"VALUE = '{task}'\\n")
# Stay at work until wswarm forecasts the conflict, and (notify) tells this agent of it.
news = Path(os.environ["WSWARM_NEWS"])
for _ in range(600):
    if events.exists() and f'"kind": "conflict-forecast", "task": "{task}"' in events.read_text() \\
            and news.read_text().strip():
        break
    time.sleep(0.05)
print("news:", news.read_text())
"""


def test_a_conflict_between_two_running_agents_is_forecast_and_told_before_either_finishes(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "left", "type": "general", "description": "d", "dependencies": [], "files": []},
        {"id": "right", "type": "general", "description": "d", "dependencies": [], "files": []}])
    runs = repo.state_dir / "runs"
    # The agents find the event log of the one run there will be.
    finder = f"EVENTS = next(Path({str(runs)!r}).glob('*/events.jsonl'))\n"
    script = agent_script(AGENT.replace('events = Path(os.environ["EVENTS"])', "events = " + finder.split(" = ", 1)[1]))

    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "2", "--agent-cmd", script)

    assert res.returncode == 0, res.stderr
    [run] = runs.iterdir()
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    forecasts = [e for e in events if e["kind"] == "conflict-forecast"]
    assert {(e["task"], e["other"]) for e in forecasts} >= {("left", "right"), ("right", "left")}
    assert all(e["files"] == ["app/core.py"] for e in forecasts)
    first_finish = min(i for i, e in enumerate(events) if e["kind"] == "agent-finished")
    assert events.index(forecasts[0]) < first_finish
    for task in ("left", "right"):
        news = (run / "attempts" / task / "1" / "news.jsonl").read_text().splitlines()
        assert any("conflict with what task" in json.loads(line)["message"] for line in news)
    # one of them merged first; the other conflicted and merged on its second attempt
    assert sorted(e["task"] for e in events if e["kind"] == "merged") == ["left", "right"]


RESTART_AGENT = """
shared = Path(os.environ["SHARED"])
task, attempt = os.environ["WSWARM_TASK_ID"], os.environ["WSWARM_ATTEMPT"]
core = Path("app/core.py")
if task == "fast":
    for _ in range(600):                   # once slow has made its change
        if (shared / "slow-wrote").exists():
            break
        time.sleep(0.05)
    core.write_text("VALUE = 'fast'\\n")
elif attempt == "1":
    core.write_text("VALUE = 'slow'\\n")
    (shared / "slow-wrote").touch()
    time.sleep(60)                         # still at work when its conflict with fast's merge is forecast
else:
    core.write_text(core.read_text() + "OTHER = 'slow'\\n")   # on top of what merged
"""


def test_restart_stops_an_attempt_heading_for_a_conflict_with_merged_work_and_does_not_charge_it(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    repo.write("wswarm.toml", '[scheduler]\non_forecast = "restart"\n')
    repo.commit_all("config")
    shared = tmp_path / "shared"
    shared.mkdir()
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "fast", "type": "general", "description": "d", "dependencies": [], "files": []},
        {"id": "slow", "type": "general", "description": "d", "dependencies": [], "files": []}])

    # One attempt each: the restarted attempt must not count.
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "2", "--max-attempts", "1",
                 "--agent-cmd", agent_script(RESTART_AGENT), env={"SHARED": str(shared)})

    assert res.returncode == 0, res.stderr
    tasks = {t["id"]: t for t in wswarm(repo.path, "status", "--json").json()["tasks"]}
    assert tasks["slow"]["status"] == "merged" and tasks["slow"]["attempts"] == 2
    [run] = (repo.state_dir / "runs").iterdir()
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    [restarted] = [e for e in events if e["kind"] == "restarted"]
    assert (restarted["task"], restarted["attempt"], restarted["files"]) == ("slow", 1, ["app/core.py"])
    assert any(e["kind"] == "conflict-forecast" and e["task"] == "slow" and e["other"] == "integration head"
               for e in events)
    feedback = (run / "attempts" / "slow" / "2" / "feedback.txt").read_text()
    assert "stopped early" in feedback and "app/core.py" in feedback
    branch = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    assert repo.show(branch, "app/core.py") == "VALUE = 'fast'\nOTHER = 'slow'"


PAIR_AGENT = """
runs = Path(os.environ["RUNS"])
task, attempt = os.environ["WSWARM_TASK_ID"], os.environ["WSWARM_ATTEMPT"]
core = Path("app/core.py")
if attempt == "2":
    core.write_text(core.read_text() + f"OTHER = '{task}'\\n")     # on top of what merged
    sys.exit(0)
core.write_text(f"VALUE = '{task}'\\n")
if task == "older":
    # at work until wswarm has stopped the younger one, then done
    for _ in range(600):
        logs = list(runs.glob("*/events.jsonl"))
        if logs and '"kind": "restarted"' in logs[0].read_text():
            break
        time.sleep(0.05)
else:
    time.sleep(60)
"""


def test_restart_stops_the_younger_of_two_running_attempts_heading_for_each_other(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    repo.write("wswarm.toml", '[scheduler]\non_forecast = "restart"\n')
    repo.commit_all("config")
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "older", "type": "general", "description": "d", "dependencies": [], "files": []},
        {"id": "younger", "type": "general", "description": "d", "dependencies": [], "files": []}])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "2", "--max-attempts", "1",
                 "--agent-cmd", agent_script(PAIR_AGENT), env={"RUNS": str(repo.state_dir / "runs")})

    assert res.returncode == 0, res.stderr
    tasks = {t["id"]: t for t in wswarm(repo.path, "status", "--json").json()["tasks"]}
    assert (tasks["older"]["attempts"], tasks["younger"]["attempts"]) == (1, 2)
    [run] = (repo.state_dir / "runs").iterdir()
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    [restarted] = [e for e in events if e["kind"] == "restarted"]
    assert (restarted["task"], restarted["other"], restarted["files"]) == ("younger", "older", ["app/core.py"])
    kinds = [(e["kind"], e.get("task"), e.get("attempt")) for e in events]
    # its second attempt started only once the older one had merged: no conflict, nothing charged
    assert kinds.index(("attempt-started", "younger", 2)) > kinds.index(("merged", "older", 1))
    assert not any(e["kind"] == "conflict" for e in events)
    branch = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    assert repo.show(branch, "app/core.py") == "VALUE = 'older'\nOTHER = 'younger'"


def test_a_bug_in_a_forecast_round_reaches_the_loop_instead_of_stopping_forecasts_silently(repo: Repo) -> None:
    from worktree_swarm.swarm import forecast as fc

    def broken() -> dict[tuple[str, int], tuple[Path, Sha]]:
        raise RuntimeError("a bug")

    forecaster = fc.Forecaster(GitRepo.discover(repo.path), running=broken, head=lambda: Sha("0" * 40))
    forecaster.start()
    forecaster._thread.join(timeout=30)
    try:
        forecaster.take()
    except RuntimeError as exc:
        assert str(exc) == "a bug"
    else:
        raise AssertionError("the round's error was swallowed")
