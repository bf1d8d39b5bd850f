"""A distributed run whose git remote is served over the network by `git daemon` on 127.0.0.1 (git://,
pushes enabled), not a folder: the transport a remote machine would see, with real workers."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WSWARM, Repo, git, write_plan
from tests.redis_server import RedisServer
from tests.test_remote_run import Cluster, agent_cmd, cluster_on, events


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def daemon_cluster(repo: Repo, redis_server: RedisServer, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    served = tmp_path / "served"
    served.mkdir()
    git(tmp_path, "clone", "-q", "--bare", str(repo.path), str(served / "project.git"))
    port = _free_port()
    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen(["git", "daemon", "--export-all", "--enable=receive-pack", "--reuseaddr",
                               "--listen=127.0.0.1", f"--port={port}", f"--base-path={served}", str(served)],
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 20
    while not _listening(port):
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
        assert time.monotonic() < deadline, "git daemon did not listen within 20 s"
        time.sleep(0.05)
    try:
        with cluster_on(f"git://127.0.0.1:{port}/project.git", repo, redis_server, tmp_path, monkeypatch) as c:
            yield c
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def test_a_plan_spread_over_workers_through_a_git_daemon_merges_every_task(daemon_cluster: Cluster,
                                                                           tmp_path: Path) -> None:
    c = daemon_cluster
    agent, marks = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [
        *({"id": t, "type": "feature", "description": t, "files": [f"out/{t}.txt"]} for t in "abcd"),
        {"id": "e", "type": "feature", "description": "e", "files": ["out/e.txt"], "dependencies": ["a", "c"]}])
    for name in ("w1", "w2"):
        c.start_worker(name, agent=agent, agents=2)
    for t in "abcd":     # none finishes before all four have started: both workers get two
        (marks / f"wait-{t}").write_text("")
    integrator = subprocess.Popen([*WSWARM, "start", "--plan", str(plan),
                                   "--redis", c.redis.url, "--agent-cmd", agent, "--lease", "5"],
                                  cwd=c.repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while not all((marks / f"{t}-1.pid").is_file() for t in "abcd"):
        assert integrator.poll() is None, integrator.communicate()[1]
        assert time.monotonic() < deadline, "four agents did not start"
        time.sleep(0.05)
    (marks / "go").write_text("")
    _, err = integrator.communicate(timeout=180)
    assert integrator.returncode == 0, err
    evs = events(c.repo)
    assert sorted(e["task"] for e in evs if e["kind"] == "merged") == ["a", "b", "c", "d", "e"]
    assigned = [e["worker"] for e in evs if e["kind"] == "attempt-assigned"]
    assert sorted(assigned[:4]) == ["w1", "w1", "w2", "w2"] and len(assigned) == 5
    [dist] = [e for e in evs if e["kind"] == "distributed"]
    assert dist["remote"] == "origin"
    [branch] = c.repo.branches("wswarm/*/integration")
    assert all(c.repo.git("show", f"{branch}:out/{t}.txt") == f"{t} done" for t in "abcde")
    # The workers cloned over git://, and the run's refs left the daemon's repository when it ended.
    for name in ("w1", "w2"):
        assert git(c.root / name / "clone", "remote", "get-url", "origin") == c.origin
    served = tmp_path / "served" / "project.git"
    assert git(served, "for-each-ref", "--format=%(refname)") == "refs/heads/main"

