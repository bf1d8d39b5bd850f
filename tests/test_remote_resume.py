"""Resuming a distributed run whose integrator was killed: the same Redis and remote, attempts still
running on workers collected (not started again), outcomes sent meanwhile merged once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WSWARM, wswarm, write_plan
from tests.test_remote_run import Cluster, cluster, events, until  # noqa: F401  (cluster is a fixture)
from worktree_swarm.remote import protocol as p

# Writes one file named after its task; with marks/wait-TASK, only once marks/go-TASK exists.
AGENT = """\
import os, sys, time
from pathlib import Path
task = os.environ["WSWARM_TASK_ID"]
marks = Path(sys.argv[1])
(marks / f"{task}-{os.environ['WSWARM_ATTEMPT']}.pid").write_text(str(os.getpid()))
while (marks / f"wait-{task}").is_file() and not (marks / f"go-{task}").is_file():
    time.sleep(0.05)
Path("out").mkdir(exist_ok=True)
Path("out", task + ".txt").write_text(task + " done\\n")
"""


def _agent(tmp_path: Path) -> tuple[str, Path]:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    marks = tmp_path / "marks"
    marks.mkdir()
    return f"{sys.executable} {script} {marks}", marks


def _run_id(c: Cluster) -> str:
    [run] = list((c.repo.state_dir / "runs").iterdir())
    return run.name


def _names(c: Cluster) -> p.Names:
    return p.Names(p.repository_id([c.repo.git("rev-list", "--max-parents=0", "HEAD")]))


def test_a_killed_integrator_resumed_collects_the_attempts_still_on_workers(cluster: Cluster,  # noqa: F811
                                                                            tmp_path: Path) -> None:
    agent, marks = _agent(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [
        {"id": t, "type": "feature", "description": t, "files": [f"out/{t}.txt"]} for t in "abc"])
    for t in "abc":
        (marks / f"wait-{t}").write_text("")
    cluster.start_worker("w1", agent=agent, agents=3)
    integrator = subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                                   "--agent-cmd", agent, "--lease", "5", "--max-attempts", "1"],
                                  cwd=cluster.repo.path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
    until(lambda: all((marks / f"{t}-1.pid").is_file() for t in "abc"), what="three agents started")
    integrator.send_signal(signal.SIGKILL)
    integrator.wait()
    run = _run_id(cluster)
    # b finishes while no integrator listens: its outcome waits on the stream.
    (marks / "go-b").write_text("")
    client = cluster.client()
    until(lambda: client.xlen(_names(cluster).outcomes(run)) == 1, what="b's outcome on the stream")

    # Without the cluster key nothing is resumed, and nothing changes.
    before = [e["kind"] for e in events(cluster.repo)]
    res = wswarm(cluster.repo.path, "resume", env={"WSWARM_CLUSTER_KEY": ""})
    assert res.returncode == 2 and "WSWARM_CLUSTER_KEY is not set" in res.stderr, res.stderr
    assert [e["kind"] for e in events(cluster.repo)] == before

    resumed = subprocess.Popen([*WSWARM, "resume", run], cwd=cluster.repo.path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    adopted = until(lambda: [e for e in events(cluster.repo) if e["kind"] == "distributed" and "adopted" in e],
                    what="the resumed integrator adopted the attempts")
    assert adopted[0]["adopted"] == ["a#1", "b#1", "c#1"] and adopted[0]["finished_meanwhile"] == ["b#1"]
    (marks / "go-a").write_text("")
    (marks / "go-c").write_text("")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()

    evs = events(cluster.repo)
    # Each task merged once, from its first and only attempt; no attempt was handed out again.
    assert sorted((e["task"], e["attempt"]) for e in evs if e["kind"] == "merged") == [("a", 1), ("b", 1), ("c", 1)]
    assert sorted(e["task"] for e in evs if e["kind"] == "attempt-assigned") == ["a", "b", "c"]
    assert sorted(e["task"] for e in evs if e["kind"] == "attempt-started") == ["a", "b", "c"]
    assert not list(marks.glob("*-2.pid"))
    assert not [e for e in evs if e["kind"] in ("remote-result-rejected", "attempt-reclaimed")]
    [branch] = cluster.repo.branches("wswarm/*/integration")
    assert len(cluster.repo.git("rev-list", "--merges", f"main..{branch}").split()) == 3
    assert cluster.repo.git("show", f"{branch}:out/a.txt") == "a done"
    status = wswarm(cluster.repo.path, "status", "--json").json()
    assert [t["status"] for t in status["tasks"]] == ["merged"] * 3


def test_resume_of_a_run_whose_redis_needs_a_password_asks_for_it_in_the_environment() -> None:
    from worktree_swarm.remote.setup import Distributed, recorded
    from worktree_swarm.util.errors import UsageError

    dist = Distributed("redis://:s3cret@redis-host:6379/0", remote="origin", lease=7)
    kept = dist.record()
    assert "s3cret" not in str(kept) and kept["redis_url"] == "redis://redis-host:6379/0"
    with pytest.raises(UsageError, match="needs a password") as refused:
        recorded({"distributed": kept}, {})
    assert "WSWARM_REDIS_URL=redis://:PASSWORD@redis-host:6379/0" in str(refused.value.hint)
    back = recorded({"distributed": kept}, {"WSWARM_REDIS_URL": "redis://:s3cret@redis-host:6379/0"})
    assert back == Distributed("redis://:s3cret@redis-host:6379/0", remote="origin", lease=7)
    with pytest.raises(UsageError, match="names redis://other:6379/0"):
        recorded({"distributed": kept}, {"WSWARM_REDIS_URL": "redis://:s3cret@other:6379/0"})
    assert recorded({"distributed": None}, {}) is None
