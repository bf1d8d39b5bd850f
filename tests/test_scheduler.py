"""The scheduler's decisions, in-process: no git, no processes. Hand-picked cases, then random DAGs
driven to the end by random outcomes, checked against what must always hold."""

from __future__ import annotations

import random

import pytest

from worktree_swarm.swarm.scheduler import (AttemptKind, Decision, Held, Overlap, Scheduler, TaskState, TaskStatus,
                                             charged)

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


# -- overlap: which ready task starts beside what runs, and retries from a moved head ----------------

def overlapping(*ids: str, files: dict[str, list[str]], overlap: Overlap = Overlap.AVOID, tracked: list[str] | None = None,
                retry_wait: float = 60.0) -> Scheduler:
    return Scheduler(order=list(ids), dependencies={}, priority={}, max_attempts=3, files=files,
                     tracked=tracked or [], overlap=overlap, retry_wait=retry_wait)


@pytest.mark.parametrize(("p", "q", "tracked", "expected"), [
    (["pricing.py"], ["pricing.py"], [], "'pricing.py'"),
    (["src/*.py"], ["src/cart.py"], [], "'src/*.py' / 'src/cart.py'"),
    (["src/"], ["src/a/b.py"], [], "'src/' / 'src/a/b.py'"),
    (["src/*.py"], ["*/cart.py"], ["src/cart.py", "src/x.py"], "'src/cart.py' (patterns 'src/*.py' and '*/cart.py')"),
    (["src/*.py"], ["docs/*.md"], ["src/cart.py", "docs/a.md"], None),
    ([], ["src/a.py"], [], None),
])
def test_declared_patterns_overlap_when_they_can_match_one_path(p: list[str], q: list[str], tracked: list[str],
                                                                expected: str | None) -> None:
    s = overlapping("a", "b", files={"a": p, "b": q}, tracked=tracked)
    assert s.overlaps("a", "b") == expected
    assert (s.overlaps("b", "a") is None) == (expected is None)


def test_files_an_attempt_changed_count_as_much_as_declared_ones() -> None:
    s = overlapping("a", "b", "c", files={"b": ["app/*.py"]})
    assert s.overlaps("a", "b") is None and s.overlaps("a", "c") is None
    s.learn("a", ["app/core.py", "README.md"])
    assert s.overlaps("a", "b") == "app/core.py"
    s.learn("c", ["README.md"])
    assert s.overlaps("a", "c") == "README.md"
    assert s.overlaps("b", "c") is None
    # a task nothing is known of overlaps nothing, unless asked to assume the worst
    t = overlapping("x", "y", files={})
    assert t.overlaps("x", "y") is None and t.overlaps("x", "y", unknown=True) == "its files are not known"


def test_avoid_starts_a_disjoint_task_first_and_an_overlapping_one_only_to_fill_an_idle_agent() -> None:
    s = overlapping("a", "b", "c", files={"a": ["pricing.py"], "b": ["pricing.py"], "c": ["cart.py"]})
    assert s.pick(head="h", now=0) == "a"
    s.start("a", head="h")
    assert s.held(head="h", now=0) == [Held("b", "a", "both change 'pricing.py'")]
    assert s.pick(head="h", now=0) == "c"       # b waits: c overlaps nothing running
    s.start("c", head="h")
    assert s.held(head="h", now=0) == []         # nothing disjoint left: b is not held back, only short of an agent
    assert s.pick(head="h", now=0) == "b"       # and an agent would otherwise sit idle


def test_serialize_never_runs_two_overlapping_tasks_at_once() -> None:
    s = overlapping("a", "b", files={"a": ["pricing.py"], "b": ["pricing.py"]}, overlap=Overlap.SERIALIZE)
    s.start("a", head="h")
    assert s.pick(head="h", now=0) is None
    assert s.held(head="h", now=0) == [Held("b", "a", "both change 'pricing.py'")]
    s.finish("a", 1, K.GATED)
    assert s.pick(head="h", now=0) is None       # merging is still running
    s.finish("a", 1, K.MERGED)
    assert s.pick(head="h2", now=0) == "b" and s.held(head="h2", now=0) == []


def test_ignore_starts_in_priority_order_whatever_overlaps() -> None:
    s = overlapping("a", "b", files={"a": ["p.py"], "b": ["p.py"]}, overlap=Overlap.IGNORE)
    s.start("a", head="h")
    assert s.pick(head="h", now=0) == "b" and s.held(head="h", now=0) == []


def test_a_retry_waits_for_overlapping_work_instead_of_failing_again_on_the_same_head() -> None:
    s = overlapping("needs-file", "adds-file", files={}, retry_wait=30)
    s.start("adds-file", head="h0")
    s.start("needs-file", head="h0")
    assert s.finish("needs-file", 1, K.AGENT_FAILED, now=100) == Decision.RETRY
    # same head, work that may overlap (its files are not known) still running: it waits
    assert s.pick(head="h0", now=101) is None
    [held] = s.held(head="h0", now=101)
    assert (held.task, held.waiting_for) == ("needs-file", "adds-file")
    assert "failed while this task ran" in held.reason
    # the head moved (the other task merged): it starts, from the new head
    s.finish("adds-file", 1, K.GATED)
    s.finish("adds-file", 1, K.MERGED)
    assert s.pick(head="h1", now=102) == "needs-file"


def test_a_retry_starts_at_once_when_nothing_overlapping_runs_or_when_the_wait_is_over() -> None:
    s = overlapping("a", "b", files={"a": ["a.py"], "b": ["b.py"]}, retry_wait=30)
    s.start("a", head="h0")
    s.start("b", head="h0")
    s.finish("a", 1, K.GATE_FAILED, now=100)
    assert s.pick(head="h0", now=101) == "a"     # b runs, but it changes other files
    t = overlapping("a", "b", files={}, retry_wait=30)
    assert overlapping("a", files={}, overlap=Overlap.IGNORE).retry_wait == 60.0
    t.start("a", head="h0")
    t.start("b", head="h0")
    t.finish("a", 1, K.GATE_FAILED, now=100)
    assert t.pick(head="h0", now=129) is None
    assert t.pick(head="h0", now=130) == "a"     # bounded: never waits past retry_wait
    t.start("a", head="h0")
    assert t.tasks["a"].failed_head is None       # a new attempt clears the wait


def test_a_conflict_retry_never_waits_the_head_has_moved() -> None:
    s = overlapping("a", "b", "c", files={})
    for t in "abc":
        s.start(t, head="h0")
    s.finish("b", 1, K.GATED)
    s.finish("b", 1, K.MERGED)                   # the integration head is now h1
    s.finish("a", 1, K.CONFLICT, now=5)
    assert s.pick(head="h1", now=6) == "a"       # c still runs, but a's retry starts from a new head


def test_ignore_retries_at_once_as_before() -> None:
    s = overlapping("a", "b", files={}, overlap=Overlap.IGNORE)
    s.start("a", head="h0")
    s.start("b", head="h0")
    s.finish("a", 1, K.AGENT_FAILED, now=1)
    assert s.pick(head="h0", now=2) == "a" and s.held(head="h0", now=2) == []


def test_a_task_that_failed_on_this_head_goes_after_every_other_ready_task() -> None:
    # b needs what a will merge; a has not started yet (one agent): b's retry must not come first
    s = overlapping("b", "a", "c", files={"c": ["c.py"]}, retry_wait=60)
    s.priority = {"b": 2, "a": 1, "c": 0}
    s.start("b", head="h0")
    assert s.finish("b", 1, K.AGENT_FAILED, now=1) == Decision.RETRY
    assert s.pick(head="h0", now=2) == "a"
    s.start("a", head="h0")
    assert s.pick(head="h0", now=2) == "c"       # b still waits: a runs and may be what it needs
    s.start("c", head="h0")
    s.finish("a", 1, K.GATED)
    s.finish("a", 1, K.MERGED)
    assert s.pick(head="h1", now=3) == "b"       # a new head: b is fresh again


def test_a_stale_task_alone_still_starts() -> None:
    s = overlapping("b", files={}, retry_wait=60)
    s.start("b", head="h0")
    s.finish("b", 1, K.AGENT_FAILED, now=1)
    assert s.pick(head="h0", now=2) == "b"       # nothing else to do, nothing running to wait for


def test_retries_one_at_a_time_go_oldest_start_first_then_by_priority() -> None:
    # A chain replayed in reverse: c3 needs c2, which needs c1; c3 comes first in the plan.
    s = overlapping("c3", "c2", "c1", "i1", files={}, retry_wait=60)
    s.start("c3", head="h0")
    s.start("c2", head="h0")
    s.finish("c2", 1, K.AGENT_FAILED, now=1)
    s.finish("c3", 1, K.AGENT_FAILED, now=1)
    assert s.pick(head="h0", now=2) == "c1"
    s.start("c1", head="h0")
    s.finish("c1", 1, K.GATED)
    s.finish("c1", 1, K.MERGED)
    assert s.pick(head="h1", now=3) == "c3"        # both failed from h0: the plan's order
    s.start("c3", head="h1")
    assert s.pick(head="h1", now=3) == "i1"        # c2 waits: such retries go one at a time
    s.start("i1", head="h1")
    s.finish("c3", 2, K.AGENT_FAILED, now=4)
    s.finish("i1", 1, K.GATED)
    s.finish("i1", 1, K.MERGED)
    assert s.pick(head="h2", now=5) == "c2"        # its failed attempt started from an older head than c3's
    s.start("c2", head="h2")
    s.finish("c2", 2, K.GATED)
    s.finish("c2", 2, K.MERGED)
    assert s.pick(head="h3", now=6) == "c3"


def test_retries_of_tasks_whose_files_are_unknown_go_one_at_a_time_in_priority_order() -> None:
    s = overlapping("p1", "p2", "p3", "p4", files={}, retry_wait=60)
    for t in ("p1", "p2", "p3", "p4"):
        s.start(t, head="h0")
    s.finish("p1", 1, K.GATED)
    s.finish("p1", 1, K.MERGED)
    for t in ("p2", "p3", "p4"):                 # each needed the one before it: none applied on h0
        assert s.finish(t, 1, K.AGENT_FAILED, now=1) == Decision.RETRY
    assert s.pick(head="h1", now=2) == "p2"
    s.start("p2", head="h1")
    assert s.pick(head="h1", now=2) is None     # p3 and p4 wait for p2's retry
    assert [(h.task, h.waiting_for) for h in s.held(head="h1", now=2)] == [("p3", "p2"), ("p4", "p2")]
    s.finish("p2", 2, K.GATED)
    s.finish("p2", 2, K.MERGED)
    assert s.pick(head="h2", now=3) == "p3"
    # a task that failed after changing files is known, and retries beside the others
    t = overlapping("a", "b", files={}, retry_wait=60)
    t.start("a", head="h0")
    t.start("b", head="h0")
    t.learn("a", ["a.py"])
    t.finish("a", 1, K.GATE_FAILED, now=1)
    t.finish("b", 1, K.AGENT_FAILED, now=1)
    t.start("b", head="h0")
    assert t.pick(head="h0", now=2) == "a"


# -- the index of running tasks: the same answers as comparing every pair ------------------------------

PATH_PARTS = ["src", "app", "a", "b.py", "c.md", "x y"]
ODD = ["src/*.py", "**/b.py", "a/?", "[ab]/b.py", " src", "./a", "././a", "a//b.py", "a/./b.py", "a/../src", "/src",
       "src/", "a\\b.py", "src/[", "."]


def random_path(rng: random.Random) -> str:
    return "/".join(rng.choice(PATH_PARTS) for _ in range(rng.randint(1, 3)))


def held_pairwise(s: Scheduler, ready: list[str]) -> dict[str, tuple[str, str] | None]:
    """For each of READY, the first running task it overlaps (plan order) and where: every pair compared."""
    out: dict[str, tuple[str, str] | None] = {}
    for task in ready:
        out[task] = next(((other, where) for other in s.running()
                          if other != task and (where := s.overlaps(task, other))), None)
    return out


@pytest.mark.parametrize("seed", range(400))
def test_the_running_index_finds_the_first_overlap_every_pair_would(seed: int) -> None:
    rng = random.Random(seed)
    ids = [f"t{i}" for i in range(rng.randint(2, 14))]
    files = {t: [rng.choice(ODD) if rng.random() < 0.15 else random_path(rng) + rng.choice(["", "", "/"])
                 for _ in range(rng.randint(0, 3))] for t in ids}
    tracked = sorted({random_path(rng) for _ in range(20)})
    s = Scheduler(order=ids, dependencies={}, priority={t: rng.randint(0, 3) for t in ids}, max_attempts=3,
                  files=files, tracked=tracked, overlap=rng.choice([Overlap.AVOID, Overlap.SERIALIZE]))
    for t in ids:
        if rng.random() < 0.5:
            s.learn(t, {random_path(rng) for _ in range(rng.randint(1, 3))})
        if rng.random() < 0.5:
            s.start(t)
    ready = s.ready()
    expected = held_pairwise(s, ready)
    got = {h.task: (h.waiting_for, h.reason.removeprefix("both change ")) for h in s.held(head="h", now=0.0)}
    free = [t for t in ready if expected[t] is None]
    if s.overlap == Overlap.SERIALIZE or free:
        assert got == {t: e for t, e in expected.items() if e is not None}
    else:
        assert got == {}
    picked = s.pick(head="h", now=0.0)
    if free:
        assert picked == free[0]
    else:
        assert picked == (ready[0] if ready and s.overlap == Overlap.AVOID else None)
