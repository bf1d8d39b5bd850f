"""Agents on the integrator's machine beside workers (`--redis` with `--agents N`): a real redis-server,
real `wswarm worker` processes, the real CLI; where each attempt ran is in the event log."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import WSWARM, Repo, git, wswarm, write_plan
from tests.test_remote_run import Cluster, agent_cmd, cluster, events, until  # noqa: F401  (cluster is a fixture)


def _where(evs: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """(task, attempt) -> where it ran: "local", or the worker's name; each attempt is announced once."""
    out: dict[tuple[str, int], str] = {}
    for e in evs:
        if e["kind"] == "attempt-assigned":
            key = (e["task"], e["attempt"])
            assert key not in out, f"{key} announced twice"
            out[key] = "local" if e.get("local") else e["worker"]
    return out


def side_by_side(c: Cluster, plan: Path, agent: str, marks: Path, *, worker: str = "w1",
                 extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """`wswarm start` with one agent here and one attempt on workers at once (the [distributed] bound),
    a worker WORKER started for it, and tasks a and b told to wait until the test lets them go."""
    (c.repo.path / "wswarm.toml").write_text("[distributed]\nremote_agents = 1\n")
    c.start_worker(worker, agent=agent)
    for t in "ab":
        (marks / f"wait-{t}").write_text("")
    return subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--redis", c.redis.url, "--agent-cmd", agent,
                             "--agents", "1", "--lease", "5", *extra], cwd=c.repo.path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def test_a_plan_runs_partly_here_and_partly_on_a_worker_like_a_local_run(cluster: Cluster,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    agent, marks = agent_cmd(tmp_path)
    tasks = [{"id": t, "type": "feature", "description": t, "files": [f"out/{t}.txt"]} for t in "abcd"]
    tasks.append({"id": "e", "type": "feature", "description": "e", "files": ["out/e.txt"], "dependencies": ["a", "b"]})
    plan = write_plan(tmp_path / "plan.json", tasks)
    # The first two wait until both have started: one here, one on the worker, side by side.
    integrator = side_by_side(cluster, plan, agent, marks)
    until(lambda: (marks / "a-1.pid").is_file() and (marks / "b-1.pid").is_file(), what="a and b both running")
    (marks / "go").write_text("")
    _, err = integrator.communicate(timeout=180)
    assert integrator.returncode == 0, err
    assert "up to 1 attempt on workers and 1 agent here" in err, err
    evs = events(cluster.repo)
    where = _where(evs)
    assert sorted(t for t, _ in where) == ["a", "b", "c", "d", "e"]      # one attempt each, each announced once
    assert {where[("a", 1)], where[("b", 1)]} == {"local", "w1"}
    # Every task merged once; remote agents' events carry their worker's name, local ones none.
    assert sorted(e["task"] for e in evs if e["kind"] == "merged") == ["a", "b", "c", "d", "e"]
    finished = {e["task"]: e.get("worker") for e in evs if e["kind"] == "agent-finished"}
    assert finished == {t: (None if place == "local" else place) for (t, _), place in where.items()}
    [local_here] = {e["host"] for e in evs if e["kind"] == "attempt-assigned" and e.get("local")}
    assert local_here
    [branch] = cluster.repo.branches("wswarm/*/integration")
    tree = cluster.repo.git("rev-parse", f"{branch}^{{tree}}")
    # The same plan, all here, from the same base in another clone: the same tree.
    local = Repo(tmp_path / "local")
    git(tmp_path, "clone", "-q", cluster.origin, str(local.path))
    res = wswarm(local.path, "start", "--plan", str(plan), "--agent-cmd", agent, "--agents", "2", timeout=180)
    assert res.returncode == 0, res.stderr
    [local_branch] = local.branches("wswarm/*/integration")
    assert local.git("rev-parse", f"{local_branch}^{{tree}}") == tree
    assert not [e for e in _where_events(local) if e.get("local")]     # a local run announces nothing


def _where_events(repo: Repo) -> list[dict[str, Any]]:
    return [e for e in events(repo) if e["kind"] == "attempt-assigned"]


def test_without_agents_here_every_attempt_goes_to_workers(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    agent, _ = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [
        {"id": t, "type": "feature", "description": t, "files": [f"out/{t}.txt"]} for t in "ab"])
    cluster.start_worker("w1", agent=agent, agents=2)
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--redis", cluster.redis.url, "--agent-cmd", agent,
                 timeout=120)
    assert res.returncode == 0, res.stderr
    assert "2 tasks, up to 32 attempts on workers, integration branch" in res.stderr
    assert set(_where(events(cluster.repo)).values()) == {"w1"}
    # Nothing was checked out here: no slot, no worktree of the run.
    assert "wswarm" not in cluster.repo.git("worktree", "list")


def test_a_killed_mixed_run_resumed_adopts_the_workers_attempt_and_starts_the_local_one_again(
        cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    agent, marks = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [
        {"id": t, "type": "feature", "description": t, "files": [f"out/{t}.txt"]} for t in "ab"])
    integrator = side_by_side(cluster, plan, agent, marks, extra=("--max-attempts", "1"))
    until(lambda: (marks / "a-1.pid").is_file() and (marks / "b-1.pid").is_file(), what="a and b both running")
    where = until(lambda: len(w := _where(events(cluster.repo))) == 2 and w, what="both attempts announced")
    [here] = [t for (t, _), place in where.items() if place == "local"]
    [there] = [t for (t, _), place in where.items() if place == "w1"]
    integrator.send_signal(signal.SIGKILL)
    integrator.wait()

    resumed = subprocess.Popen([*WSWARM, "resume"], cwd=cluster.repo.path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    adopted = until(lambda: [e for e in events(cluster.repo) if e["kind"] == "distributed" and "adopted" in e],
                    what="the resumed integrator adopted the worker's attempt")
    assert adopted[0]["adopted"] == [f"{there}#1"]
    (marks / "go").write_text("")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()
    evs = events(cluster.repo)
    # The worker's attempt merged as it was; the one that ran here died with its integrator (not
    # charged: one attempt allowed) and ran again, here, as a local resume does.
    assert sorted((e["task"], e["attempt"]) for e in evs if e["kind"] == "merged") == sorted([(there, 1), (here, 2)])
    assert _where(evs) == {(here, 1): "local", (there, 1): "w1", (here, 2): "local"}
    assert not (marks / f"{there}-2.pid").exists()
    assert [t["status"] for t in wswarm(cluster.repo.path, "status", "--json").json()["tasks"]] == ["merged"] * 2
