"""What keeps a distributed run's transport cheap, with real parts (redis-server, `wswarm worker`
processes, a bare remote over file://): the remote holds only the refs live attempts need, a worker
fetches each start commit once and only what merged since its last one, and many attempts side by
side on several workers still merge each task exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import WSWARM, git, wswarm, write_plan
from tests.test_remote_run import Cluster, agent_cmd, cluster, events, until  # noqa: F401  (cluster is a fixture)
from worktree_swarm.remote import protocol as p
from worktree_swarm.remote.worker import KEEP_STARTS


def _remote_refs(c: Cluster) -> list[str]:
    return git(Path(c.origin.removeprefix("file://")), "for-each-ref", "--format=%(refname)").split()


def test_the_remote_gets_only_the_refs_a_worker_needs_and_keeps_none(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    agent, marks = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "a", "type": "feature", "description": "a", "files": ["out/a.txt"]},
        {"id": "b", "type": "feature", "description": "b", "files": ["out/b.txt"]},
        {"id": "c", "type": "feature", "description": "c", "files": ["out/c.txt"], "dependencies": ["a", "b"]}])
    (marks / "wait-c").write_text("")
    cluster.start_worker("w1", agent=agent, agents=2)
    integrator = subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                                   "--agent-cmd", agent, "--lease", "5"],
                                  cwd=cluster.repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
    try:
        until(lambda: (marks / "c-1.pid").is_file(), what="c's agent started")
        [started] = [e for e in events(cluster.repo) if e["kind"] == "attempt-started" and e["task"] == "c"]
        base = git(cluster.repo.path, "rev-parse", "HEAD")
        run = started["branch"].split("/")[1]
        # a and b came back with their objects (nothing of theirs on the remote), and c's start went
        # with c's request, which the worker could read: only the run's first start was ever pushed.
        assert _remote_refs(cluster) == ["refs/heads/main", f"refs/wswarm/{run}/start/{base}"]
        assert {e["task"] for e in events(cluster.repo) if e["kind"] == "merged"} == {"a", "b"}
    finally:
        (marks / "go").write_text("")
        out, err = integrator.communicate(timeout=120)
    assert integrator.returncode == 0, err.decode()
    assert sorted(e["task"] for e in events(cluster.repo) if e["kind"] == "merged") == ["a", "b", "c"]
    assert _remote_refs(cluster) == ["refs/heads/main"]


def _fetched_objects(trace: Path) -> list[int]:
    """Objects sent for each fetch the trace recorded (by the remote's pack-objects run for it), in order."""
    sent = []
    for path in trace.iterdir():
        lines = [json.loads(line) for line in path.read_text(errors="replace").splitlines() if line.strip()]
        names = [e for e in lines if e.get("event") == "cmd_name"]
        if names and names[0].get("hierarchy") == "fetch/upload-pack/pack-objects":
            sent += [(names[0]["time"], int(e["value"])) for e in lines if e.get("key") == "write_pack_file/wrote"]
    return [n for _, n in sorted(sent)]


def chain_plan(tmp_path: Path, ids: list[str], *, then: dict[str, Any] | None = None) -> Path:
    """A plan of IDS each depending on the one before (each writes out/<id>.txt), and THEN after them."""
    return write_plan(tmp_path / "plan.json", [
        {"id": t, "type": "feature", "description": t, "files": [f"out/{t}.txt"],
         "dependencies": [ids[i - 1]] if i else []} for i, t in enumerate(ids)] + ([then] if then else []))


def run_traced(c: Cluster, tmp_path: Path, plan: Path, agent: str) -> Path:
    """PLAN run to its end on one worker, w1, whose git processes are traced: the trace's folder."""
    trace = tmp_path / "trace"
    trace.mkdir()
    c.start_worker("w1", agent=agent, env={"GIT_TRACE2_EVENT": str(trace)})
    res = wswarm(c.repo.path, "start", "--plan", str(plan), "--redis", c.redis.url,
                 "--agent-cmd", agent, "--lease", "5", timeout=300)
    assert res.returncode == 0, res.stderr
    return trace


def _pushes(trace: Path) -> int:
    """Pushes the trace recorded."""
    count = 0
    for path in trace.iterdir():
        lines = [json.loads(line) for line in path.read_text(errors="replace").splitlines() if line.strip()]
        names = [e for e in lines if e.get("event") == "cmd_name"]
        count += bool(names) and names[0].get("name") == "push"
    return count


def test_a_worker_gets_each_new_start_with_its_request_and_keeps_refs_to_the_last(cluster: Cluster,  # noqa: F811
                                                                                   tmp_path: Path) -> None:
    agent, _ = agent_cmd(tmp_path)
    # A chain: each task starts from the merge of the one before, ten different start commits.
    tasks = [f"t{i}" for i in range(10)]
    plan = chain_plan(tmp_path, tasks)
    trace = run_traced(cluster, tmp_path, plan, agent)
    evs = events(cluster.repo)
    assert [e["task"] for e in evs if e["kind"] == "merged"] == tasks
    starts = [e["start"] for e in evs if e["kind"] == "attempt-started"]
    assert len(set(starts)) == len(tasks)
    # The first starts from the base, which the clone has; each later one came with its request,
    # its few new objects counted from the start before, which the worker had: no fetch at all. Each
    # task branch went back the same way, with its outcome: no push either.
    assert _fetched_objects(trace) == []
    assert _pushes(trace) == 0
    clone = cluster.root / "w1" / "clone"
    kept = git(clone, "for-each-ref", "--format=%(objectname)", "refs/wswarm/*/start/*").split()
    assert sorted(kept) == sorted(starts[-KEEP_STARTS:])
    for sha in starts:      # each one whole: its tree reads back from the worker's clone
        git(clone, "ls-tree", "-r", sha)


BIG_AGENT = """\
import os
from pathlib import Path
task = os.environ["WSWARM_TASK_ID"]
Path("out").mkdir(exist_ok=True)
Path("out", task + ".bin").write_bytes(os.urandom(400 * 1024) if task == "big" else task.encode())
"""


def test_a_start_too_big_to_send_inline_is_fetched_and_only_what_is_new_travels(cluster: Cluster,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    script = tmp_path / "big_agent.py"
    script.write_text(BIG_AGENT)
    agent = f"{sys.executable} {script}"
    # big brings 400 KB that does not compress: the start of `after` (big merged) goes through the
    # remote; the start of `last` (after merged) is inline again, counted from after's start.
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "big", "type": "feature", "description": "big", "files": ["out/big.bin"]},
        {"id": "after", "type": "feature", "description": "after", "files": ["out/after.bin"],
         "dependencies": ["big"]},
        {"id": "last", "type": "feature", "description": "last", "files": ["out/last.bin"],
         "dependencies": ["after"]}])
    (cluster.repo.path / "wswarm.toml").write_text("[gate]\nchecks = []\n")
    trace = run_traced(cluster, tmp_path, plan, agent)
    assert [e["task"] for e in events(cluster.repo) if e["kind"] == "merged"] == ["big", "after", "last"]
    # One fetch, after's start: the merge commit alone. big's commit, its trees and its 400 KB file
    # are the worker's own (it made big, and kept a ref to it), and the kept refs spare everything older.
    [sent] = _fetched_objects(trace)
    assert sent == 1, sent
    assert _pushes(trace) == 1      # big's branch, too big to go with its outcome


def test_many_attempts_on_several_workers_merge_each_task_exactly_once(cluster: Cluster,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    agent, _ = agent_cmd(tmp_path)
    tasks = [f"t{i:02d}" for i in range(24)]
    plan = write_plan(tmp_path / "plan.json", [
        {"id": t, "type": "feature", "description": t, "files": [f"out/{t}.txt"]} for t in tasks])
    (cluster.repo.path / "wswarm.toml").write_text("[distributed]\nremote_agents = 6\n")
    cluster.start_worker("w1", agent=agent, agents=3)
    cluster.start_worker("w2", agent=agent, agents=3)
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                 "--agent-cmd", agent, "--lease", "10", timeout=300)
    assert res.returncode == 0, res.stderr
    evs = events(cluster.repo)
    assert sorted((e["task"], e["attempt"]) for e in evs if e["kind"] == "merged") == [(t, 1) for t in tasks]
    assert not [e for e in evs if e["kind"] in ("remote-result-rejected", "attempt-reclaimed", "error")]
    assert {e["worker"] for e in evs if e["kind"] == "attempt-assigned"} == {"w1", "w2"}
    [branch] = cluster.repo.branches("wswarm/*/integration")
    files = cluster.repo.git("ls-tree", "--name-only", f"{branch}:out").split()
    assert files == [f"{t}.txt" for t in tasks]
    assert _remote_refs(cluster) == ["refs/heads/main"]


def _merged(c: Cluster) -> list[str]:
    """Tasks the run has merged so far (none while its event log is not there yet)."""
    try:
        return [e["task"] for e in events(c.repo) if e["kind"] == "merged"]
    except (FileNotFoundError, ValueError):
        return []


def _blocked_reads(c: Cluster) -> int:
    """Clients of the server blocked in XREADGROUP right now."""
    return sum(1 for client in c.client().client_list() if client["cmd"] == "xreadgroup" and "b" in client["flags"])


def test_a_worker_blocked_on_a_run_that_ends_serves_the_next_run(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    agent, marks = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [{"id": "a", "type": "feature", "description": "a", "files": ["out/a.txt"]},
                                               {"id": "b", "type": "feature", "description": "b", "files": ["out/b.txt"]}])
    (marks / "wait-a").write_text("")
    w = cluster.start_worker("w1", agent=agent, agents=2)
    integrator = subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                                   "--agent-cmd", agent, "--lease", "5"],
                                  cwd=cluster.repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
    # b is done and a still runs: the worker's free agent waits for a request, blocked on the run's stream.
    until(lambda: _merged(cluster) and _blocked_reads(cluster),
          what="b merged and the worker blocked on the run's requests")
    (marks / "go").write_text("")
    out, err = integrator.communicate(timeout=120)
    assert integrator.returncode == 0, err.decode()
    # The run's streams were deleted under the blocked read: the worker takes that as the run's end.
    until(lambda: not cluster.client().smembers(p.Names(p.repository_id(
        [cluster.repo.git("rev-list", "--max-parents=0", "HEAD")])).runs), what="the run left Redis")
    assert w.proc.poll() is None, w.stderr()
    plan2 = write_plan(tmp_path / "plan2.json", [{"id": "c", "type": "feature", "description": "c",
                                                  "files": ["out/c.txt"]}])
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan2), "--redis", cluster.redis.url,
                 "--agent-cmd", agent, "--lease", "5", timeout=120)
    assert res.returncode == 0, res.stderr
    assert "internal error" not in w.stderr() and w.proc.poll() is None


def test_a_start_commit_that_cannot_be_pushed_sends_no_request_and_stops_the_run(cluster: Cluster,  # noqa: F811
                                                                                tmp_path: Path) -> None:
    agent, _ = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [{"id": "a", "type": "feature", "description": "a",
                                                "files": ["out/a.txt"]}])
    w = cluster.start_worker("w1", agent=agent)
    # Fetches from the remote work, pushes to it are refused: the start commit never gets there.
    cluster.repo.git("remote", "set-url", "--push", "origin", str(tmp_path / "no-such-remote.git"))
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                 "--agent-cmd", agent, "--lease", "5", timeout=120)
    assert res.returncode != 0
    assert "git push" in res.stderr and "internal error" not in res.stderr, res.stderr
    evs = events(cluster.repo)
    # The loop started the attempt; its request never reached a worker, and it cost the task nothing.
    assert [e["task"] for e in evs if e["kind"] == "attempt-started"] == ["a"]
    assert not [e for e in evs if e["kind"] == "attempt-assigned"]
    assert w.proc.poll() is None
    cluster.repo.git("remote", "set-url", "--push", "origin", cluster.origin)
    res = wswarm(cluster.repo.path, "resume", timeout=120)
    assert res.returncode == 0, res.stderr
    evs = events(cluster.repo)
    assert [(e["task"], e["attempt"]) for e in evs if e["kind"] == "merged"] == [("a", 2)]
    assert [e["worker"] for e in evs if e["kind"] == "attempt-assigned"] == ["w1"]


def test_a_worker_without_the_base_of_a_requests_objects_asks_for_its_start_and_gets_it(cluster: Cluster,  # noqa: F811
                                                                                          tmp_path: Path) -> None:
    agent, marks = agent_cmd(tmp_path)
    # The run's base is a commit of the integrator's own, on none of the remote's branches (a clone
    # has it only once the run pushes it); then a chain, then `hold`, whose agent waits.
    cluster.repo.write("local.txt", "not pushed\n")
    cluster.repo.commit_all("a commit of the integrator's own")
    chain = [f"c{i}" for i in range(3)]
    plan = chain_plan(tmp_path, chain, then={"id": "hold", "type": "feature", "description": "hold",
                                             "files": ["out/hold.txt"], "dependencies": [chain[-1]]})
    (marks / "wait-hold").write_text("")
    w1 = cluster.start_worker("w1", agent=agent)
    integrator = subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                                   "--agent-cmd", agent, "--lease", "5", "--max-attempts", "1"],
                                  cwd=cluster.repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
    try:
        until(lambda: (marks / "hold-1.pid").is_file(), what="hold's agent started on w1", timeout=120)
        # w2's clone has the remote's branches alone; w1 stops, and hold's next attempt (nothing charged)
        # goes to w2 with objects counted from a start w2 never saw: it asks for the start, pushed then.
        w2 = cluster.start_worker("w2", agent=agent)
        w1.proc.terminate()
        w1.proc.wait(timeout=60)
        (marks / "go").write_text("")
        out, err = integrator.communicate(timeout=180)
    finally:
        if integrator.poll() is None:
            integrator.kill()
    assert integrator.returncode == 0, err.decode()
    evs = events(cluster.repo)
    assert sorted(e["task"] for e in evs if e["kind"] == "merged") == sorted([*chain, "hold"])
    [second] = [e for e in evs if e["kind"] == "attempt-assigned" and e["task"] == "hold" and e["attempt"] == 2]
    assert second["worker"] == "w2", w2.stderr()
