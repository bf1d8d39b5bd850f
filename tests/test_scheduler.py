"""The scheduler's decisions, in-process: no git, no processes. Hand-picked cases, then random DAGs
driven to the end by random outcomes, checked against what must always hold."""

from __future__ import annotations

import random

import pytest

from worktree_swarm.swarm.scheduler import AttemptKind, Decision, Scheduler, TaskState, TaskStatus, charged

K = AttemptKind


def chain(*ids: str, max_attempts: int = 3, priority: dict[str, int] | None = None,
          deps: dict[str, list[str]] | None = None) -> Scheduler:
    return Scheduler(order=list(ids), dependencies=deps or {}, priority=priority or {}, max_attempts=max_attempts)


def test_ready_tasks_come_longest_chain_first_then_in_plan_order() -> None:
    s = chain("a", "b", "c", "d", priority={"a": 0, "b": 2, "c": 2, "d": 1})
    assert s.ready() == ["b", "c", "d", "a"]


def test_a_task_is_ready_only_once_every_dependency_merged() -> None:
    s = chain("a", "b", "c", deps={"c": ["a", "b"]})
    assert s.ready() == ["a", "b"]
    n = s.start("a")
    assert (n, s.ready()) == (1, ["b"])
    assert s.finish("a", 1, K.GATED) == Decision.MERGE and s.status("a") == TaskStatus.MERGING
    s.finish("a", 1, K.MERGED)
    assert s.ready() == ["b"]
    s.start("b")
    s.finish("b", 1, K.MERGED)
    assert s.ready() == ["c"]


@pytest.mark.parametrize("kind", [K.GATE_FAILED, K.AGENT_FAILED, K.TIMEOUT, K.NO_OP, K.CONFLICT, K.ERROR])
def test_a_failed_attempt_is_retried_until_the_budget_is_spent(kind: AttemptKind) -> None:
    s = chain("a", max_attempts=3)
    decisions = []
    for _ in range(3):
        n = s.start("a")
        decisions.append(s.finish("a", n, kind))
    assert decisions == [Decision.RETRY, Decision.RETRY, Decision.GIVE_UP]
    assert s.status("a") == TaskStatus.FAILED and s.tasks["a"].charged == 3


def test_an_interrupted_attempt_costs_nothing() -> None:
    s = chain("a", max_attempts=1)
    n = s.start("a")
    assert s.finish("a", n, K.INTERRUPTED) == Decision.AGAIN and s.status("a") == TaskStatus.PENDING
    n = s.start("a")
    assert n == 2 and s.tasks["a"].charged == 0
    assert s.finish("a", n, K.GATE_FAILED) == Decision.GIVE_UP


def test_the_count_is_a_function_of_how_attempts_ended() -> None:
    kinds = [K.CONFLICT, K.INTERRUPTED, K.EJECTED, K.RUNNING, K.GATED, K.MERGED]
    assert charged(kinds) == 3
    rebuilt = TaskState(attempts=dict(enumerate(kinds, 1)))
    assert (rebuilt.charged, rebuilt.started) == (3, 6)


def test_an_ejected_culprit_spends_one_attempt_and_one_built_on_it_spends_none() -> None:
    s = chain("guilty", "built", max_attempts=2, deps={"built": ["guilty"]})
    s.start("guilty")
    s.finish("guilty", 1, K.MERGED)
    s.start("built")
    s.finish("built", 1, K.MERGED)
    assert s.eject("guilty", 1, culprit=True) == Decision.RETRY
    assert s.tasks["guilty"].charged == 1           # one attempt, ejected: not two
    assert s.eject("built", 1, culprit=False) == Decision.RETRY
    assert s.ready() == ["guilty"]                 # "built" waits for its dependency again
    s.start("guilty")
    assert s.finish("guilty", 2, K.MERGED) == Decision.MERGE
    assert s.eject("guilty", 2, culprit=True) == Decision.GIVE_UP
    # Collateral is redone even with its budget spent: the ejection was not its doing.
    s2 = chain("x", max_attempts=1)
    s2.start("x")
    s2.finish("x", 1, K.MERGED)
    assert s2.eject("x", 1, culprit=False) == Decision.RETRY


def test_failure_blocks_every_task_downstream_with_the_reason() -> None:
    s = chain("a", "b", "c", "d", max_attempts=1, deps={"b": ["a"], "c": ["b"], "d": []})
    s.start("a")
    s.finish("a", 1, K.GATE_FAILED)
    first = s.block_dependents()
    assert [(b.task, b.reason) for b in first] == [("b", "depends on 'a', which failed"),
                                                   ("c", "depends on 'b', which blocked")]
    assert s.block_dependents() == [] and s.ready() == ["d"]


def test_past_the_spending_limit_nothing_new_starts() -> None:
    s = chain("a", "b", "c")
    s.start("a")
    assert s.stop_when_spent(spent=4.0, limit=5.0) == [] and s.stop_when_spent(spent=9.0, limit=None) == []
    blocked = s.stop_when_spent(spent=5.0, limit=5.0)
    assert [b.task for b in blocked] == ["b", "c"] and "($5.00 spent, --max-cost 5)" in blocked[0].reason
    assert s.status("a") == TaskStatus.RUNNING     # a running attempt finishes
    assert s.ready() == []


def test_a_started_task_is_not_started_twice() -> None:
    s = chain("a")
    s.start("a")
    assert s.ready() == []
    with pytest.raises(AssertionError):
        s.start("a")


# --- random plans, random outcomes ------------------------------------------------------------

OUTCOMES = [K.MERGED, K.MERGED, K.MERGED, K.CONFLICT, K.GATE_FAILED, K.AGENT_FAILED, K.NO_OP, K.TIMEOUT,
            K.INTERRUPTED]


def random_plan(rng: random.Random) -> tuple[list[str], dict[str, list[str]]]:
    ids = [f"t{i}" for i in range(rng.randint(1, 12))]
    deps = {t: sorted(rng.sample(ids[:i], rng.randint(0, min(i, 3)))) for i, t in enumerate(ids)}
    return ids, deps


@pytest.mark.parametrize("seed", range(300))
def test_any_plan_with_any_outcomes_ends_and_keeps_its_invariants(seed: int) -> None:
    rng = random.Random(seed)
    ids, deps = random_plan(rng)
    max_attempts = rng.randint(1, 4)
    s = Scheduler(order=ids, dependencies=deps, priority={t: rng.randint(0, 3) for t in ids},
                  max_attempts=max_attempts)
    agents = rng.randint(1, 4)
    running: list[tuple[str, int]] = []
    for _step in range(10_000):
        s.block_dependents()
        for task in s.ready():
            if len(running) >= agents:
                break
            assert all(s.status(d) == TaskStatus.MERGED for d in deps[task])
            running.append((task, s.start(task)))
        if not running:
            break
        task, n = running.pop(rng.randrange(len(running)))
        kind = rng.choice(OUTCOMES)
        if kind == K.MERGED:
            assert s.finish(task, n, K.GATED) == Decision.MERGE
        decision = s.finish(task, n, kind)
        state = s.tasks[task]
        assert state.charged <= max_attempts
        assert (decision == Decision.GIVE_UP) == (state.status == TaskStatus.FAILED)
        # Rebuilt from how its attempts ended, a task counts the same (as after a crash).
        assert TaskState(attempts=dict(state.attempts)).charged == state.charged
    else:
        pytest.fail("the run never ended")
    assert s.finished()
    for t in ids:
        if s.status(t) == TaskStatus.MERGED:
            assert all(s.status(d) == TaskStatus.MERGED for d in deps[t])
        if s.status(t) == TaskStatus.BLOCKED:
            assert any(s.status(d) in (TaskStatus.FAILED, TaskStatus.BLOCKED) for d in deps[t])
            assert s.tasks[t].attempts == {}
        if s.status(t) == TaskStatus.FAILED:
            assert s.tasks[t].charged == max_attempts
