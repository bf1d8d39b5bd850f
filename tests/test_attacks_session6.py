"""Attacks on the outcome's inline objects (protocol 3), run for real: a keyholder worker's outcome
names its head, and the integrator writes the payload's objects and sets the task branch there
(`gitwire.write_branches`). Real git in temporary repositories; the distributed one with a real
redis-server and a real `wswarm start --redis`, the worker played by the test with the cluster key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import WSWARM, Repo, write_plan
from tests.test_remote_run import KEY, Cluster, cluster  # noqa: F401  (cluster is a fixture)
from worktree_swarm.gate.report import GateReport
from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.remote import gitwire, inline
from worktree_swarm.remote import protocol as p
from worktree_swarm.swarm.attempt import Outcome
from worktree_swarm.util.types import BranchName, Sha


def wire(path: Path) -> GitRepo:
    return GitRepo(root=path, common_dir=path / ".git")


def stash_a_secret(repo: Repo) -> str:
    """The user's uncommitted work, kept in their stash: a commit no worker has ever seen."""
    repo.write("README.md", "# sample\nSECRET_TOKEN=hunter2\n")
    repo.git("stash", "-q")
    return repo.git("rev-parse", "refs/stash")


def loose_objects(path: Path) -> int:
    return sum(len(files) for folder, _, files in os.walk(path / ".git" / "objects")
               if len(Path(folder).name) == 2)


# -- 1. a head the payload never carried --------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["abbreviated", "upper case", "full id, not in the payload"])
def test_an_outcome_cannot_name_a_commit_only_the_integrator_has(repo: Repo, spelling: str) -> None:
    start = repo.git("rev-parse", "HEAD")
    stash = stash_a_secret(repo)
    head = {"abbreviated": stash[:7], "upper case": stash.upper(), "full id, not in the payload": stash}[spelling]
    empty = base64.b64encode(zlib.compress(b"")).decode()     # a payload with no object at all

    errors = gitwire.write_branches(wire(repo.path), [(BranchName("wswarm/r/t/1"), Sha(head), Sha(start), empty)])

    branch = repo.git("rev-parse", "--verify", "-q", "refs/heads/wswarm/r/t/1", check=False)
    assert branch != stash, "the task branch now holds the user's stash, which no worker sent"
    assert errors[0] is not None


def wait(cond: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """COND's first true value; a timeout is a broken setup (pytest.fail, not the attack's AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := cond():
            return got
        time.sleep(0.05)
    pytest.fail(f"setup: timed out waiting for {what}")


def take_request(client: redis.Redis, names: p.Names, run: str) -> tuple[bytes, dict[str, Any]]:
    """The next request of RUN, read as a worker of the group would, and its signed body."""
    stream = names.requests(run)

    def read() -> Any:
        got = client.xreadgroup(p.WORKER_GROUP, "evil", {stream: ">"}, count=1, block=200)
        return got[0][1][0] if got and got[0][1] else None
    entry, fields = wait(read, "a request")
    return entry, p.unseal(KEY.encode(), fields, kind="request")


def test_a_worker_cannot_merge_and_read_back_the_users_stash(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    repo = cluster.repo
    secret = stash_a_secret(repo)
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "t", "type": "feature", "description": "t", "files": ["out/t.txt"]},
        {"id": "u", "type": "feature", "description": "u", "files": ["out/u.txt"], "dependencies": ["t"]}])
    client = cluster.client()
    names = p.Names(p.repository_id([repo.git("rev-list", "--max-parents=0", "HEAD")]))
    client.hset(p.worker_key("evil"), mapping={"name": "evil", "host": "h", "pid": 1, "repo": names.repo,
                                                "agents": 1, "busy": 0, "done": 0, "version": p.VERSION,
                                                "load": "0.00", "heartbeat": f"{time.time():.3f}"})
    integrator = subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                                   "--agent-cmd", "true", "--lease", "60", "--max-attempts", "1"],
                                  cwd=repo.path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
    try:
        run = wait(lambda: next(iter(client.smembers(names.runs)), b"").decode(), "the run")
        entry, req = take_request(client, names, run)
        assert req["task"]["id"] == "t"
        a = p.parse_request(req)
        # The "worker" ran nothing: it reports its task gated at the stash's abbreviated id, no objects.
        forged = Outcome(task=a.request.task, n=a.request.n, kind="gated", branch=a.request.branch,
                         start=a.request.start, head=Sha(secret[:7]), report=GateReport(()))
        empty = base64.b64encode(zlib.compress(b"")).decode()
        client.xadd(names.outcomes(run), p.seal(KEY.encode(), "outcome",  # type: ignore[arg-type]
                                                p.outcome_body(run, a.token, "evil", forged, objects=empty)))
        client.xack(names.requests(run), p.WORKER_GROUP, entry)
        # Settled: the next task's request comes (t merged), or the run ends (t refused, u blocked).
        stream = names.requests(run)

        def settled() -> Any:
            try:
                got = client.xreadgroup(p.WORKER_GROUP, "evil", {stream: ">"}, count=1, block=200)
            except redis.ResponseError:     # the run ended and took its streams with it
                got = None
            if got and got[0][1]:
                return ("request", p.unseal(KEY.encode(), got[0][1][0][1], kind="request"))
            return ("ended", None) if integrator.poll() is not None else None
        how, second = wait(settled, "the forged outcome to settle", timeout=120)
        integration = [b for b in repo.git("for-each-ref", "--format=%(refname)", "refs/heads/wswarm").split()
                       if b.endswith("/integration")]
        merged = repo.git("show", f"{integration[0]}:README.md", check=False) if integration else ""
        # And what reached this "worker" with the next request: the stash's content.
        carried = b""
        if how == "request" and isinstance(second.get("objects"), dict):
            for segment in second["objects"]["data"].split("."):
                carried += zlib.decompress(base64.b64decode(segment))
        leaks = (["the user's stashed work was merged into the integration branch"] if "SECRET_TOKEN" in merged
                 else []) + (["the stashed secret went out to a worker in a request"] if b"SECRET_TOKEN" in carried
                             else [])
        assert not leaks, leaks
    finally:
        integrator.terminate()
        try:
            integrator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            integrator.kill()
            integrator.wait()


# -- 2. a payload far beyond what a worker sends --------------------------------------------------------

def _blob_record(data: bytes) -> bytes:
    oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return f"3 {len(data)} {oid}\n".encode() + data


def test_an_outcome_payload_beyond_inline_bytes_writes_nothing(repo: Repo) -> None:
    start = repo.git("rev-parse", "HEAD")
    raw = b"".join(_blob_record(b"%d\n" % i) for i in range(20_000))
    payload = base64.b64encode(zlib.compress(raw, 9)).decode()
    assert len(payload) > 4 * inline.INLINE_BYTES       # no honest worker sends this (objects_since)
    before = loose_objects(repo.path)

    errors = gitwire.write_branches(wire(repo.path), [(BranchName("wswarm/r/t/1"), Sha("0" * 40), Sha(start), payload)])

    assert errors[0] is not None
    written = loose_objects(repo.path) - before
    assert written == 0, f"{written} loose objects written into the user's repository from one outcome"
