"""Distributed runs with real parts: a real redis-server, `wswarm worker` processes each with its own
clone and HOME (separate machines in miniature), a bare remote over file://, and the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import WSWARM, Repo, alive, git, wswarm, write_plan
from tests.redis_server import RedisServer
from worktree_swarm.remote import protocol as p

KEY = "test-cluster-key-0123456789abcdef"


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    redis: RedisServer
    origin: str           # the remote's URL
    repo: Repo            # the integrator's checkout
    root: Path
    workers: list[Worker]

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    def start_worker(self, name: str, *, agent: str, agents: int = 1, env: dict[str, str] | None = None) -> Worker:
        home = self.root / name / "home"
        home.mkdir(parents=True)
        (home / ".gitconfig").write_text("[user]\n\tname = Worker\n\temail = worker@example.invalid\n")
        env = {**os.environ, "HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
               "WSWARM_CLUSTER_KEY": KEY, **(env or {})}
        log = self.root / name / "stderr.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([*WSWARM, "worker", "--redis", self.redis.url, "--repo", self.origin,
                                     "--agents", str(agents), "--name", name, "--dir", str(self.root / name / "clone"),
                                     "--agent-cmd", agent], cwd=self.root / name, env=env, stdout=out, stderr=out,
                                    stdin=subprocess.DEVNULL)
        w = Worker(name, proc, log)
        self.workers.append(w)
        until(lambda: self.client().exists(p.worker_key(name)) == 1 or proc.poll() is not None, what=f"{name} registered")
        assert proc.poll() is None, w.stderr()
        return w


def until(cond: Callable[[], Any], *, what: str, timeout: float = 60) -> Any:
    """Wait for COND to hold (polling an observable state, not sleeping for an order of events)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


@contextlib.contextmanager
def cluster_on(origin: str, repo: Repo, redis_server: RedisServer, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A cluster whose remote is ORIGIN; its workers stopped at the end."""
    repo.git("remote", "add", "origin", origin)
    monkeypatch.setenv("WSWARM_CLUSTER_KEY", KEY)
    c = Cluster(redis=redis_server, origin=origin, repo=repo, root=tmp_path / "machines", workers=[])
    try:
        yield c
    finally:
        for w in c.workers:
            if w.proc.poll() is None:
                w.proc.terminate()
                try:
                    w.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    w.proc.kill()


@pytest.fixture
def cluster(repo: Repo, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo.path), str(bare))
    with cluster_on(f"file://{bare}", repo, redis_server, tmp_path, monkeypatch) as c:
        yield c


# Writes one file named after its task (its first attempt after the seconds in marks/sleep-TASK; with
# marks/wait-TASK, once marks/go exists), and says which process it is.
AGENT = """\
import os, sys, time
from pathlib import Path
task = os.environ["WSWARM_TASK_ID"]
marks = Path(sys.argv[1])
(marks / f"{task}-{os.environ['WSWARM_ATTEMPT']}.pid").write_text(str(os.getpid()))
if os.environ["WSWARM_ATTEMPT"] == "1" and (marks / f"sleep-{task}").is_file():
    time.sleep(float((marks / f"sleep-{task}").read_text()))
while (marks / f"wait-{task}").is_file() and not (marks / "go").is_file():
    time.sleep(0.05)
Path("out").mkdir(exist_ok=True)
Path("out", task + ".txt").write_text(task + " done\\n")
print("wrote out/" + task + ".txt")
"""


def agent_cmd(tmp_path: Path) -> tuple[str, Path]:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    marks = tmp_path / "marks"
    marks.mkdir()
    return f"{sys.executable} {script} {marks}", marks


def events(repo: Repo) -> list[dict[str, Any]]:
    [run] = list((repo.state_dir / "runs").iterdir())
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_a_plan_spread_over_three_workers_merges_each_task_once_like_a_local_run(cluster: Cluster, tmp_path: Path) -> None:
    agent, marks = agent_cmd(tmp_path)
    # Three tasks side by side, each worker one agent: every worker gets one; a fourth depends on one.
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "a", "type": "feature", "description": "a", "files": ["out/a.txt"]},
        {"id": "b", "type": "feature", "description": "b", "files": ["out/b.txt"]},
        {"id": "c", "type": "feature", "description": "c", "files": ["out/c.txt"]},
        {"id": "d", "type": "feature", "description": "d", "files": ["out/d.txt"], "dependencies": ["a"]}])
    for name in ("w1", "w2", "w3"):
        cluster.start_worker(name, agent=agent)
    for task in "abc":
        (marks / f"sleep-{task}").write_text("1")
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                 "--agent-cmd", agent, "--lease", "5", timeout=180)
    assert res.returncode == 0, res.stderr
    evs = events(cluster.repo)
    merged = [e["task"] for e in evs if e["kind"] == "merged"]
    assert sorted(merged) == ["a", "b", "c", "d"]
    assert {e["worker"] for e in evs if e["kind"] == "attempt-assigned"} == {"w1", "w2", "w3"}
    # Remote agents' events are in the run's log with their worker's name.
    assert {e["task"] for e in evs if e["kind"] == "agent-finished" and e.get("worker")} == {"a", "b", "c", "d"}
    # What a remote agent printed is in `wswarm logs`, as for a local one.
    logs = wswarm(cluster.repo.path, "logs", "d")
    assert logs.returncode == 0 and "wrote out/d.txt" in logs.stdout, logs.stderr
    [branch] = cluster.repo.branches("wswarm/*/integration")
    remote_tree = cluster.repo.git("rev-parse", f"{branch}^{{tree}}")
    # The same plan run locally, from the same base, in another clone: the same tree.
    local = Repo(tmp_path / "local")
    git(tmp_path, "clone", "-q", cluster.origin, str(local.path))
    res = wswarm(local.path, "start", "--plan", str(plan), "--agent-cmd", agent, "--agents", "3", timeout=180)
    assert res.returncode == 0, res.stderr
    [local_branch] = local.branches("wswarm/*/integration")
    assert local.git("rev-parse", f"{local_branch}^{{tree}}") == remote_tree
    # Nothing stays behind on the remote or in Redis once the run is over; refs/heads are untouched.
    bare = Path(cluster.origin.removeprefix("file://"))
    assert git(bare, "for-each-ref", "--format=%(refname)") == "refs/heads/main"
    client = cluster.client()
    assert client.smembers(p.Names(p.repository_id([cluster.repo.git("rev-list", "--max-parents=0", "HEAD")])).runs) == set()


def test_the_integrator_acknowledges_what_it_reads(cluster: Cluster, tmp_path: Path) -> None:
    # Acknowledged with the reader's next read, off the way to a merge: while a later task runs, no
    # outcome or event read before it is still pending in the integrator's group.
    agent, marks = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "a", "type": "feature", "description": "a"},
        {"id": "b", "type": "feature", "description": "b", "dependencies": ["a"]}])
    cluster.start_worker("w1", agent=agent)
    (marks / "wait-b").write_text("")
    integrator = subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                                   "--agent-cmd", agent, "--lease", "5"], cwd=cluster.repo.path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    until(lambda: (marks / "b-1.pid").is_file(), what="b's agent started")
    client = cluster.client()
    names = p.Names(p.repository_id([cluster.repo.git("rev-list", "--max-parents=0", "HEAD")]))
    [run] = [r.decode() for r in client.smembers(names.runs)]

    def pending() -> dict[str, int]:
        return {stream: {g["name"]: g for g in client.xinfo_groups(stream)}[p.INTEGRATOR_GROUP.encode()]["pending"]
                for stream in (names.outcomes(run), names.events(run))}

    until(lambda: pending() == {names.outcomes(run): 0, names.events(run): 0}, what="everything read acknowledged",
          timeout=10)
    assert client.xlen(names.outcomes(run)) == 1        # a's outcome was read, and acknowledged
    (marks / "go").write_text("")
    _, err = integrator.communicate(timeout=120)
    assert integrator.returncode == 0, err.decode()


def test_a_worker_killed_mid_attempt_is_reclaimed_and_not_charged(cluster: Cluster, tmp_path: Path) -> None:
    agent, marks = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [{"id": "slow", "type": "feature", "description": "slow one"}])
    first = cluster.start_worker("w1", agent=agent)
    (marks / "sleep-slow").write_text("600")
    integrator = subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                                   "--agent-cmd", agent, "--lease", "2", "--max-attempts", "1"],
                                  cwd=cluster.repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
    pid = int(until(lambda: (marks / "slow-1.pid").is_file() and (marks / "slow-1.pid").read_text(),
                    what="the first attempt's agent started"))
    # Its worker dies without a word; its agent with it (a machine gone).
    first.proc.send_signal(signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    first.proc.wait()
    until(lambda: not alive(pid), what="the agent is gone")
    cluster.start_worker("w2", agent=agent)
    out, err = integrator.communicate(timeout=120)
    # One attempt allowed: had the reclaimed one been charged, the task would have failed.
    assert integrator.returncode == 0, err.decode()
    evs = events(cluster.repo)
    [reclaimed] = [e for e in evs if e["kind"] == "attempt-reclaimed"]
    assert reclaimed["task"] == "slow" and reclaimed["attempt"] == 1 and reclaimed["worker"] == "w1"
    [merged] = [e for e in evs if e["kind"] == "merged"]
    assert merged["attempt"] == 2
    assert [e["worker"] for e in evs if e["kind"] == "attempt-assigned"] == ["w1", "w2"]
    status = wswarm(cluster.repo.path, "status", "--json").json()
    assert status["tasks"][0]["status"] == "merged"


def _forged_run(cluster: Cluster) -> tuple[redis.Redis, p.Names, str]:
    client = cluster.client()
    names = p.Names(p.repository_id([cluster.repo.git("rev-list", "--max-parents=0", "HEAD")]))
    run = "forged-run"
    client.xgroup_create(names.requests(run), p.WORKER_GROUP, id="0", mkstream=True)
    client.sadd(names.runs, run)
    return client, names, run


def _request(cluster: Cluster, run: str, command: str) -> dict[str, Any]:
    from worktree_swarm.plan import Task
    from worktree_swarm.swarm.executor import AttemptRequest
    from worktree_swarm.util.types import BranchName, Sha, TaskId

    task = Task(id=TaskId("evil"), type="feature", description="x", command=command)
    head = cluster.repo.git("rev-parse", "HEAD")
    return p.request_body(run, "tok", AttemptRequest(task=task, n=1, branch=BranchName("wswarm/x/tasks/evil/1"),
                                                     start=Sha(head), feedback=None, env={}, dependencies=[]))


def _consumed(client: redis.Redis, stream: str, entry: bytes) -> bool:
    """The group has handed ENTRY out and nobody holds it any more (it was acknowledged)."""
    info = {g["name"]: g for g in client.xinfo_groups(stream)}[p.WORKER_GROUP.encode()]
    return info["last-delivered-id"] == entry and info["pending"] == 0


def test_forged_requests_are_refused_and_a_version_skew_is_named(cluster: Cluster, tmp_path: Path) -> None:
    agent, _ = agent_cmd(tmp_path)
    w = cluster.start_worker("w1", agent=agent)
    client, names, run = _forged_run(cluster)
    pwned = tmp_path / "PWNED"
    body = _request(cluster, run, f"touch {pwned}")
    # Unsigned, then signed with another key, then altered after signing.
    for fields in ({"msg": json.dumps({"kind": "request", "version": p.VERSION, "body": body})},
                   p.seal(b"not the cluster key at all", "request", body),
                   {**p.seal(KEY.encode(), "request", body), "msg": json.dumps(
                       {"kind": "request", "version": p.VERSION, "body": {**body, "n": 2}})}):
        entry = client.xadd(names.requests(run), fields)  # type: ignore[arg-type]
        until(lambda: _consumed(client, names.requests(run), entry), what="the worker consumed the entry")
    assert w.stderr().count("refused request") == 3
    assert "unsigned message" in w.stderr() and w.stderr().count("bad signature") == 2
    # A signed request from another version: refused, and its sender is told both versions.
    msg = json.dumps({"kind": "request", "version": "0.0.1/protocol-0", "body": body})
    entry = client.xadd(names.requests(run), {"msg": msg, "sig": p._sign(KEY.encode(), msg)})
    until(lambda: _consumed(client, names.requests(run), entry), what="the worker consumed the entry")
    [(_, [(_, reply)])] = until(lambda: client.xread({names.outcomes(run): "0"}), what="the worker's reply")
    said = p.unseal(KEY.encode(), reply, kind="outcome")
    assert said["kind"] == "error" and "0.0.1/protocol-0" in said["reason"] and p.VERSION in said["reason"]
    # Signed by a keyholder, but a plan task's own command: a worker runs only the agents it is configured with.
    client.xadd(names.requests(run), p.seal(KEY.encode(), "request", body))  # type: ignore[arg-type]
    replies = until(lambda: (got := client.xread({names.outcomes(run): "0"})) and len(got[0][1]) == 2 and got[0][1],
                    what="the worker's second reply")
    said = p.unseal(KEY.encode(), replies[1][1], kind="outcome")
    assert said["kind"] == "error" and "not a task's command" in said["reason"]
    assert not pwned.exists()
    assert w.proc.poll() is None


def test_workers_lists_the_live_workers(cluster: Cluster, tmp_path: Path) -> None:
    agent, _ = agent_cmd(tmp_path)
    assert "no workers seen" in wswarm(cluster.repo.path, "workers", "--redis", cluster.redis.url).stdout
    cluster.start_worker("w1", agent=agent, agents=3)
    cluster.start_worker("w2", agent=agent)
    res = wswarm(cluster.repo.path, "workers", "--redis", cluster.redis.url)
    assert res.returncode == 0, res.stderr
    head, *rows = res.stdout.splitlines()
    assert head.split()[:4] == ["WORKER", "HOST", "REPOSITORY", "BUSY/AGENTS"]
    assert [(r.split()[0], r.split()[3]) for r in rows] == [("w1", "0/3"), ("w2", "0/1")]
    # A stopped worker leaves the list at once.
    cluster.workers[0].proc.terminate()
    cluster.workers[0].proc.wait(timeout=30)
    rows = wswarm(cluster.repo.path, "workers", "--redis", cluster.redis.url).stdout.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["w2"]
    res = wswarm(cluster.repo.path, "workers", "--redis", "redis://127.0.0.1:1/0")
    assert res.returncode == 2 and "cannot reach Redis" in res.stderr


def test_unreachable_redis_or_no_key_refuses_before_anything_is_created(cluster: Cluster, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = write_plan(tmp_path / "plan.json", [{"id": "a", "type": "feature", "description": "a"}])
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--redis", "redis://127.0.0.1:1/0",
                 "--agent-cmd", "true")
    assert res.returncode == 2 and "cannot reach Redis" in res.stderr and "hint:" in res.stderr
    assert not (cluster.repo.state_dir / "runs").exists() or not list((cluster.repo.state_dir / "runs").iterdir())
    monkeypatch.delenv("WSWARM_CLUSTER_KEY")
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--redis", cluster.redis.url, "--agent-cmd", "true")
    assert res.returncode == 2 and "WSWARM_CLUSTER_KEY is not set" in res.stderr
    assert cluster.repo.branches("wswarm/*") == []


def test_a_long_attempt_on_a_live_worker_is_never_reclaimed(cluster: Cluster, tmp_path: Path) -> None:
    agent, marks = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [{"id": "long", "type": "feature", "description": "long one"}])
    cluster.start_worker("w1", agent=agent)
    (marks / "sleep-long").write_text("5")      # 2.5 leases: only heartbeats keep it
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                 "--agent-cmd", agent, "--lease", "2", timeout=120)
    assert res.returncode == 0, res.stderr
    evs = events(cluster.repo)
    assert not [e for e in evs if e["kind"] == "attempt-reclaimed"]
    assert [e["attempt"] for e in evs if e["kind"] == "merged"] == [1]


def test_a_stopped_worker_resumed_past_its_lease_has_its_late_result_rejected(cluster: Cluster, tmp_path: Path) -> None:
    agent, marks = agent_cmd(tmp_path)
    # `after` waits for the test's word, so the run is still live when the late result arrives.
    plan = write_plan(tmp_path / "plan.json", [{"id": "slow", "type": "feature", "description": "slow"},
                                               {"id": "after", "type": "feature", "description": "after"}])
    (marks / "wait-after").write_text("")
    first = cluster.start_worker("w1", agent=agent)
    (marks / "sleep-slow").write_text("3")
    integrator = subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                                   "--agent-cmd", agent, "--lease", "2"],
                                  cwd=cluster.repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
    until(lambda: (marks / "slow-1.pid").is_file(), what="the first attempt's agent started")
    first.proc.send_signal(signal.SIGSTOP)
    try:
        cluster.start_worker("w2", agent=agent, agents=2)
        until(lambda: any(e["kind"] == "attempt-reclaimed" for e in events(cluster.repo)), what="the reclaim")
    finally:
        first.proc.send_signal(signal.SIGCONT)
    until(lambda: any(e["kind"] == "remote-result-rejected" for e in events(cluster.repo)),
          what="the late result rejected")
    (marks / "go").write_text("")
    out, err = integrator.communicate(timeout=120)
    assert integrator.returncode == 0, err.decode()
    evs = events(cluster.repo)
    [late] = [e for e in evs if e["kind"] == "remote-result-rejected"]
    assert late["task"] == "slow" and late["attempt"] == 1 and late["worker"] == "w1"
    assert [(e["task"], e["attempt"]) for e in evs if e["kind"] == "merged" and e["task"] == "slow"] == [("slow", 2)]


def test_redis_restarted_mid_run_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    agent, marks = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [{"id": "a", "type": "feature", "description": "a"},
                                               {"id": "b", "type": "feature", "description": "b"}])
    cluster.start_worker("w1", agent=agent, agents=2)
    for task in "ab":
        (marks / f"wait-{task}").write_text("")
    integrator = subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                                   "--agent-cmd", agent, "--lease", "5"],
                                  cwd=cluster.repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
    until(lambda: (marks / "a-1.pid").is_file() and (marks / "b-1.pid").is_file(), what="both agents started")
    cluster.redis.stop()
    (marks / "go").write_text("")      # the agents finish while Redis is down
    time.sleep(1.0)                    # an outage, not an ordering: its length is what is tested
    cluster.redis.start()
    out, err = integrator.communicate(timeout=120)
    assert integrator.returncode == 0, err.decode()
    evs = events(cluster.repo)
    assert sorted((e["task"], e["attempt"]) for e in evs if e["kind"] == "merged") == [("a", 1), ("b", 1)]
    assert not [e for e in evs if e["kind"] in ("attempt-reclaimed", "error")]
    assert [e for e in evs if e["kind"] == "redis-unreachable"]     # the integrator did see the outage


def test_a_worker_refuses_a_clone_of_another_repository_or_no_key(cluster: Cluster, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", cluster.origin, str(other))
    git(other, "remote", "set-url", "origin", "file:///somewhere/else.git")
    res = wswarm(tmp_path, "worker", "--redis", cluster.redis.url, "--repo", cluster.origin, "--dir", str(other))
    assert res.returncode == 2, res.stderr
    assert "is of another repository (origin is file:///somewhere/else.git" in res.stderr and "hint:" in res.stderr
    res = wswarm(tmp_path, "worker", "--redis", cluster.redis.url, "--repo", "file:///no/such/repo.git",
                 "--dir", str(tmp_path / "fresh"))
    assert res.returncode == 2 and "cannot clone file:///no/such/repo.git" in res.stderr
    monkeypatch.delenv("WSWARM_CLUSTER_KEY")
    res = wswarm(tmp_path, "worker", "--redis", cluster.redis.url, "--repo", cluster.origin,
                 "--dir", str(tmp_path / "fresh"))
    assert res.returncode == 2 and "WSWARM_CLUSTER_KEY is not set" in res.stderr
    assert not (tmp_path / "fresh").exists()
