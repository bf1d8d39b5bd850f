"""The orchestrator built in-process with a test executor, a real store and real git.

The executor double (a real implementation of the Executor interface, not a mock) turns each request
into a commit on the attempt's branch, written with pygit2 from the request's start commit, and
returns the outcome a script says; the loop merges, re-queues and blocks as it would with agents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pygit2
import pytest

from tests.conftest import Repo as SampleRepo
from worktree_swarm.agents.command import CommandAgent
from worktree_swarm.config import Config
from worktree_swarm.gate.cache import GateCache
from worktree_swarm.gate.report import CheckResult, GateReport
from worktree_swarm.git.diff import FileChange
from worktree_swarm.git.refs import integration_branch
from worktree_swarm.git.repo import Repo
from worktree_swarm.plan import Plan, plan_from_data
from worktree_swarm.sandbox import Confinement
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.swarm.attempt import Outcome
from worktree_swarm.swarm.executor import AttemptRequest, Executor, Phase
from worktree_swarm.swarm.loop import Swarm, SwarmOptions
from worktree_swarm.util.types import RunId, Sha

PASSED = GateReport((CheckResult("tests", "tests", "pass", 0.01),))
FAILED = GateReport((CheckResult("tests", "tests", "fail", 0.01, output="1 failed"),))


@dataclass
class Step:
    """What one attempt does: files it writes (path -> text) and how it ends."""

    files: dict[str, str] = field(default_factory=dict)
    kind: str = "gated"


Script = Callable[[AttemptRequest, pygit2.Repository], Step]


class ScriptedExecutor(Executor):
    """Runs each request at once, in the calling thread, by committing what SCRIPT says."""

    def __init__(self, path: Path, script: Script, *, agents: int = 2) -> None:
        self.git = pygit2.Repository(str(path))
        self.script = script
        self.agents = agents
        self.pending: list[AttemptRequest] = []
        self.seen: list[AttemptRequest] = []
        self.released: list[tuple[str, int, bool]] = []
        self.stopped = False

    def has_room(self) -> bool:
        return len(self.pending) < self.agents

    def submit(self, request: AttemptRequest) -> None:
        self.pending.append(request)
        self.seen.append(request)

    def running(self) -> int:
        return len(self.pending)

    def wait(self, timeout: float) -> list[Outcome]:
        # Every running attempt ends now, in submission order: the train sees them all at once.
        done, self.pending = self.pending, []
        return [self._run(request) for request in done]

    def phases(self) -> list[Phase]:
        return []

    def stop(self) -> tuple[list[Outcome], list[BaseException]]:
        self.stopped = True
        done, self.pending = self.pending, []
        return [Outcome(task=r.task, n=r.n, kind="interrupted", branch=r.branch, start=r.start) for r in done], []

    def release(self, outcome: Outcome, *, keep: bool) -> None:
        self.released.append((outcome.task.id, outcome.n, keep))

    def _run(self, request: AttemptRequest) -> Outcome:
        step = self.script(request, self.git)
        start = self.git[request.start].peel(pygit2.Commit)
        index = pygit2.Index()
        index.read_tree(start.tree)
        for path, text in step.files.items():
            index.add(pygit2.IndexEntry(path, self.git.create_blob(text.encode()), pygit2.enums.FileMode.BLOB))
        sig = pygit2.Signature("Agent", "agent@example.invalid")
        head = self.git.create_commit(f"refs/heads/{request.branch}", sig, sig, f"{request.task.id}",
                                      index.write_tree(self.git), [start.id])
        out = Outcome(task=request.task, n=request.n, kind=step.kind, branch=request.branch, start=request.start,
                      head=Sha(str(head)), changes=[FileChange(p, 1, 0) for p in step.files],
                      summary=f"{request.task.id} did it", report=PASSED if step.kind == "gated" else FAILED)
        if step.kind != "gated":
            out.reason, out.feedback = f"{step.kind} on purpose", f"feedback for {request.task.id}#{request.n}"
        return out


def build(repo: SampleRepo, plan: Plan, executor: Executor, *, max_attempts: int = 3) -> tuple[Swarm, RunStore]:
    git_repo = Repo.discover(repo.path)
    base = Sha(repo.git("rev-parse", "HEAD"))
    run_id = RunId("20260101-000000-abcd")
    branch = integration_branch(run_id)
    store = RunStore.create(git_repo.state_dir / "runs" / run_id, run_id=run_id, base=base, base_ref="HEAD",
                            integration_branch=branch, plan_json=plan.to_json(),
                            task_ids=[str(t) for t in plan.ids()], options={})
    git_repo.update_ref(branch, base, None, reason="test")
    agent = CommandAgent("true")
    swarm = Swarm(repo=git_repo, config=Config(), plan=plan, store=store, executor=executor,
                  agent_for=lambda task: agent, options=SwarmOptions(agents=2, max_attempts=max_attempts,
                                                                     agent_timeout=60),
                  pool_root=git_repo.state_dir / "worktrees", confinement=Confinement(),
                  cache=GateCache(git_repo.state_dir / "gate-cache.db", enabled=False))
    return swarm, store


def make_plan(*tasks: tuple[str, list[str]]) -> Plan:
    return plan_from_data([{"id": t, "type": "general", "description": f"do {t}", "dependencies": deps, "files": []}
                           for t, deps in tasks], source="test")


def status(store: RunStore) -> dict[str, tuple[str, int]]:
    return {t.id: (t.status, t.attempts) for t in store.tasks()}


def file_at(repo: SampleRepo, ref: str, path: str) -> str:
    return repo.git("show", f"{ref}:{path}", check=False)


def test_dependents_start_from_a_head_that_holds_what_they_depend_on(repo: SampleRepo) -> None:
    plan = make_plan(("a", []), ("b", ["a"]), ("c", ["b"]))
    executor = ScriptedExecutor(repo.path, lambda r, g: Step({f"{r.task.id}.txt": r.task.id + "\n"}))
    swarm, store = build(repo, plan, executor)

    assert swarm.run() is True

    assert status(store) == {"a": ("merged", 1), "b": ("merged", 1), "c": ("merged", 1)}
    starts = {str(r.task.id): r.start for r in executor.seen}
    assert file_at(repo, starts["b"], "a.txt") == "a"
    assert file_at(repo, starts["c"], "b.txt") == "b"
    head = store.run().integration_head
    assert head == repo.git("rev-parse", store.run().integration_branch)
    assert [file_at(repo, str(head), f"{t}.txt") for t in "abc"] == ["a", "b", "c"]
    # the dependency summaries reach the dependent's request
    assert [d["id"] for d in next(r for r in executor.seen if r.task.id == "c").dependencies] == ["a", "b"]


def test_a_conflict_re_queues_onto_the_fresh_head_with_feedback_naming_the_files(repo: SampleRepo) -> None:
    plan = make_plan(("x", []), ("y", []))
    executor = ScriptedExecutor(repo.path, lambda r, g: Step({"app/core.py": f"VALUE = '{r.task.id}'\n"}))
    swarm, store = build(repo, plan, executor)

    assert swarm.run() is True

    assert status(store) == {"x": ("merged", 1), "y": ("merged", 2)}
    retry = next(r for r in executor.seen if r.key == ("y", 2))
    first = next(r for r in executor.seen if r.key == ("y", 1))
    assert retry.start != first.start and file_at(repo, retry.start, "app/core.py") == "VALUE = 'x'"
    assert retry.feedback is not None and "app/core.py" in retry.feedback
    [conflict] = [a for a in store.attempts("y") if a.outcome == "conflict"]
    assert "app/core.py" in (conflict.reason or "")


def test_a_failed_gate_sends_its_feedback_to_the_next_attempt(repo: SampleRepo) -> None:
    plan = make_plan(("t", []),)
    executor = ScriptedExecutor(repo.path, lambda r, g: Step({"t.txt": "t\n"}, "gated" if r.n == 2 else "gate-failed"))
    swarm, store = build(repo, plan, executor)

    assert swarm.run() is True

    assert status(store) == {"t": ("merged", 2)}
    assert executor.seen[1].feedback == "feedback for t#1"
    assert [a.outcome for a in store.attempts("t")] == ["gate-failed", "merged"]
    assert ("t", 1, False) in executor.released


def test_spent_attempts_fail_the_task_and_block_its_dependents(repo: SampleRepo) -> None:
    plan = make_plan(("bad", []), ("after", ["bad"]), ("free", []))
    executor = ScriptedExecutor(repo.path, lambda r, g: Step({f"{r.task.id}.txt": "x\n"},
                                                             "agent-failed" if r.task.id == "bad" else "gated"))
    swarm, store = build(repo, plan, executor, max_attempts=2)

    assert swarm.run() is False

    assert status(store) == {"bad": ("failed", 2), "after": ("blocked", 0), "free": ("merged", 1)}
    assert "after 2 attempts" in (store.task("bad").reason or "")
    assert "bad" in (store.task("after").reason or "")
    # the failed task's last worktree is kept for inspection
    assert ("bad", 2, True) in executor.released


def test_an_executor_error_stops_the_run_and_collects_what_was_running(repo: SampleRepo) -> None:
    plan = make_plan(("a", []), ("b", []))

    class Broken(ScriptedExecutor):
        def wait(self, timeout: float) -> list[Outcome]:
            raise RuntimeError("the executor broke")

    executor = Broken(repo.path, lambda r, g: Step({"a.txt": "a\n"}))
    swarm, store = build(repo, plan, executor)

    with pytest.raises(RuntimeError, match="the executor broke"):
        swarm.run()

    assert executor.stopped
    # what was running is settled as interrupted: pending again, nothing charged, nothing merged
    assert status(store) == {"a": ("pending", 1), "b": ("pending", 1)}
    assert [a.outcome for a in store.attempts()] == ["interrupted", "interrupted"]
    assert store.run().integration_head == store.run().base


def test_the_loop_never_reaches_past_the_executor() -> None:
    """The loop talks to attempts only through the Executor interface, whichever runs them."""
    import worktree_swarm.swarm.loop as loop

    source = Path(loop.__file__).read_text()
    for local in ("LocalExecutor", "AttemptRunner", "WorktreePool", "ThreadPoolExecutor", "admission"):
        assert local not in source


def test_a_link_planted_where_the_next_attempts_feedback_is_kept_is_not_followed_on_resume(
        repo: SampleRepo, tmp_path: Path) -> None:
    """Any command agent can write the run's folder: a link at a re-queued attempt's saved feedback must not
    hand the file it names (a key, say) to the next agent as its feedback."""
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    plan = make_plan(("t", []))
    executor = ScriptedExecutor(repo.path, lambda r, g: Step({"t.txt": "t\n"}))
    swarm, store = build(repo, plan, executor)
    store.start_attempt("t", 1, branch="b", start=store.run().base)
    store.finish_attempt("t", 1, outcome="gate-failed", reason="failed")
    store.set_task("t", status="pending", attempts=1)
    saved = store.attempt_dir("t", 1) / "feedback-for-next-attempt.txt"
    saved.symlink_to(secret)

    resumed = Swarm(repo=swarm.repo, config=Config(), plan=plan, store=store, executor=executor,
                    agent_for=swarm.agent_for, options=swarm.options, pool_root=swarm.pool_root,
                    confinement=Confinement(), cache=swarm.cache)

    assert resumed.data["t"].feedback is None
    assert resumed.run() is True
    assert all("PRIVATE KEY" not in (r.feedback or "") for r in executor.seen)


def test_on_resume_the_feedback_is_the_last_judged_attempts_not_lost_to_an_interrupted_one(
        repo: SampleRepo) -> None:
    plan = make_plan(("t", []))
    executor = ScriptedExecutor(repo.path, lambda r, g: Step({"t.txt": "t\n"}))
    swarm, store = build(repo, plan, executor)
    base = store.run().base
    store.start_attempt("t", 1, branch="b1", start=base)
    store.finish_attempt("t", 1, outcome="gate-failed", reason="failed")
    (store.attempt_dir("t", 1) / "feedback-for-next-attempt.txt").write_text("fix the test\n")
    store.start_attempt("t", 2, branch="b2", start=base)
    store.finish_attempt("t", 2, outcome="interrupted", reason="interrupted")
    store.set_task("t", status="pending", attempts=2)

    resumed = Swarm(repo=swarm.repo, config=Config(), plan=plan, store=store, executor=executor,
                    agent_for=swarm.agent_for, options=swarm.options, pool_root=swarm.pool_root,
                    confinement=Confinement(), cache=swarm.cache)

    assert resumed.data["t"].feedback == "fix the test\n"
    assert resumed.run() is True
    assert executor.seen[0].n == 3 and executor.seen[0].feedback == "fix the test\n"


class ElsewhereExecutor(ScriptedExecutor):
    """The same, saying its attempts run on another machine (as a worker's do)."""

    def here(self, key: tuple[str, int]) -> bool:
        return False


@pytest.mark.parametrize("elsewhere", [False, True])
def test_shared_state_changes_are_pinned_only_on_attempts_that_ran_on_this_machine(repo: SampleRepo,
                                                                                   elsewhere: bool) -> None:
    repo.git("branch", "other")

    def switch_the_users_checkout(request: AttemptRequest, g: pygit2.Repository) -> Step:
        g.set_head("refs/heads/other")      # what a hostile agent on this machine could do
        return Step({"t.txt": "t\n"})

    cls = ElsewhereExecutor if elsewhere else ScriptedExecutor
    swarm, store = build(repo, make_plan(("t", [])), cls(repo.path, switch_the_users_checkout), max_attempts=1)

    merged = swarm.run()

    [changed, *_] = [e for e in store.events() if e["kind"] == "shared-state-changed"]
    assert "other" in changed["detail"]
    if elsewhere:
        # a worker's agent works in the worker's clone: the change here is not its doing; it is seen
        # (the last look, once nothing runs) and blamed on no one, and the attempt merges
        assert merged is True and status(store) == {"t": ("merged", 1)}
        assert changed["agents_running"] == []
    else:
        assert merged is False and status(store) == {"t": ("failed", 1)}
        assert changed["agents_running"] == ["t#1"]
        assert "git state shared with the user changed" in (store.attempts("t")[0].reason or "")
