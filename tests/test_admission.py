"""Admission control on real readings of this machine (psutil): limits it cannot meet hold agents
back, with the reason in the events, and never stall the run; limits it meets let agents run together."""

from __future__ import annotations

import json
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from conftest import Repo, wswarm, write_plan
from worktree_swarm.swarm.admission import Admission, Throttle
from worktree_swarm.config import LimitsConfig, parse_config
from worktree_swarm.util.errors import ConfigError

# Each agent records when it ran; "pair" agents wait (up to 10 s) for their partner to be running too.
AGENT = textwrap.dedent("""
    import os, time
    from pathlib import Path
    tid, log = os.environ["WSWARM_TASK_ID"], Path(os.environ["TIMES"])
    (log / f"{tid}.start").write_text(repr(time.time()))
    if os.environ.get("PAIR"):
        deadline = time.time() + 10
        while len(list(log.glob("*.start"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
    else:
        time.sleep(0.7)
    Path(tid + ".txt").write_text(tid + "\\n")
    (log / f"{tid}.end").write_text(repr(time.time()))
""")


def run(repo: Repo, tmp_path: Path, limits: str, tasks: int, env: dict[str, str] | None = None) -> tuple[
        list[dict[str, Any]], list[tuple[float, float]]]:
    repo.write("wswarm.toml", "[limits]\n" + limits)
    repo.commit_all("limits")
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    times = tmp_path / "times"
    times.mkdir()
    plan = write_plan(tmp_path / "plan.json", [{"id": f"t{i}", "description": "d"} for i in range(tasks)])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", str(tasks), "--agent-cmd",
                 f"{sys.executable} {agent}", env={"TIMES": str(times), **(env or {})})
    assert res.returncode == 0, res.stderr
    run_id = json.loads(wswarm(repo.path, "status", "--json").stdout)["run"]
    events = [json.loads(line) for line in (repo.state_dir / "runs" / run_id / "events.jsonl").read_text().splitlines()]
    spans = sorted((float((times / f"t{i}.start").read_text()), float((times / f"t{i}.end").read_text()))
                   for i in range(tasks))
    return events, spans


@pytest.mark.parametrize(("limits", "limit"), [
    ("min_free_memory_mb = 100000000\n", "min_free_memory_mb"),      # 100 TB of free memory
    ("disk_budget_mb = 0.001\n", "disk_budget_mb"),                    # a kilobyte for slots and logs
])
def test_a_limit_the_machine_cannot_meet_runs_one_agent_at_a_time_and_says_why(
        repo: Repo, tmp_path: Path, limits: str, limit: str) -> None:
    # The machine's load is not the limit under test (a busy machine would be refused for it first).
    events, spans = run(repo, tmp_path, "max_load = 1000\n" + limits, tasks=3)
    # Never two at once (the run still finished: one agent always starts when none runs).
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end
    waiting = [e for e in events if e["kind"] == "waiting-for-resources"]
    # Said once, not at every scheduler tick while the agents ran (~4 s of 0.5 s ticks).
    assert len(waiting) == 1, waiting
    assert waiting[0]["limit"] == limit and f"[limits] {limit} = " in waiting[0]["reason"]
    assert not any(e["kind"] == "resources-available" for e in events)


def test_limits_the_machine_meets_let_agents_run_side_by_side(repo: Repo, tmp_path: Path) -> None:
    events, spans = run(repo, tmp_path, "max_load = 1000\nmin_free_memory_mb = 1\nmin_free_disk_mb = 1\n"
                                        "disk_budget_mb = 100000\n", tasks=2, env={"PAIR": "1"})
    (s1, e1), (s2, e2) = spans
    assert s2 < e1, "the second agent did not start while the first ran"
    assert not any(e["kind"] == "waiting-for-resources" for e in events)


def test_the_throttle_reports_each_change_of_limit_once(tmp_path: Path) -> None:
    seen: list[tuple[str, dict[str, object]]] = []
    impossible = Admission(LimitsConfig(min_free_memory_mb=1e12, max_load=None), state_dir=tmp_path)
    throttle = Throttle(impossible, lambda kind, data: seen.append((kind, data)))
    assert throttle.admit(running=0)                # nothing runs: one agent always starts
    assert seen == []
    assert not throttle.admit(running=1) and not throttle.admit(running=1)
    assert [k for k, _ in seen] == ["waiting-for-resources"]
    assert seen[0][1]["limit"] == "min_free_memory_mb" and seen[0][1]["running"] == 1
    throttle.admission = Admission(LimitsConfig(min_free_disk_mb=1e12, min_free_memory_mb=0, max_load=None),
                                   state_dir=tmp_path)
    assert not throttle.admit(running=1)
    assert [d["limit"] for k, d in seen if k == "waiting-for-resources"] == ["min_free_memory_mb", "min_free_disk_mb"]
    throttle.admission = Admission(LimitsConfig(max_load=None, min_free_memory_mb=0, min_free_disk_mb=0),
                                   state_dir=tmp_path)
    assert throttle.admit(running=1)
    assert seen[-1][0] == "resources-available" and throttle.waiting is None


@pytest.mark.parametrize(("toml", "message"), [
    ("min_free_memory_mb = -1", "limits.min_free_memory_mb must be 0 (no minimum) or more"),
    ("max_load = 0", "limits.max_load must be greater than 0"),
    ('disk_budget_mb = "1G"', "limits.disk_budget_mb must be a number"),
    ("max_cpu = 3", "unknown key limits.max_cpu"),
])
def test_bad_limits_are_refused(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"limits": tomllib.loads(toml)}, source=Path("wswarm.toml"))
    assert message in str(err.value)


def test_limits_are_read() -> None:
    cfg = parse_config({"limits": {"max_load": 2, "min_free_memory_mb": 0, "disk_budget_mb": 500}},
                       source=Path("wswarm.toml")).limits
    assert (cfg.max_load, cfg.min_free_memory_mb, cfg.min_free_disk_mb, cfg.disk_budget_mb) == (2.0, 0.0, 2048.0, 500.0)
