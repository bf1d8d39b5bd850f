"""The scheduler's decisions, and nothing else: which task runs next, what an attempt's end means for
its task (merge, retry, give up), who is blocked, and when the money is spent. Pure: no git, no
files, no clock; the orchestrator feeds it what happened and carries out what it decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    GATING = "gating"
    MERGING = "merging"
    MERGED = "merged"
    FAILED = "failed"
    BLOCKED = "blocked"


ACTIVE = frozenset({TaskStatus.RUNNING, TaskStatus.GATING, TaskStatus.MERGING})
DONE = frozenset({TaskStatus.MERGED, TaskStatus.FAILED, TaskStatus.BLOCKED})


class AttemptKind(StrEnum):
    """How an attempt ended (or that it has not yet)."""

    RUNNING = "running"
    GATED = "gated"                # passed its gate; its merge is next
    MERGED = "merged"
    EJECTED = "ejected"            # merged, then taken out of the integration branch again
    CONFLICT = "conflict"
    GATE_FAILED = "gate-failed"
    AGENT_FAILED = "agent-failed"
    TIMEOUT = "timeout"
    NO_OP = "no-op"
    INTERRUPTED = "interrupted"
    ERROR = "error"


# Attempts that did not end in a verdict on the task's work do not count against its budget.
UNCHARGED = frozenset({AttemptKind.RUNNING, AttemptKind.GATED, AttemptKind.INTERRUPTED})


def charged(kinds: Iterable[str]) -> int:
    """Attempts that count against the task's budget, as a function of how its attempts ended: the
    same count in a running orchestrator and in one rebuilt from the attempt rows after a crash."""
    return sum(1 for kind in kinds if kind not in UNCHARGED)


@dataclass
class TaskState:
    status: TaskStatus = TaskStatus.PENDING
    attempts: dict[int, AttemptKind] = field(default_factory=dict)   # n -> how it ended
    budget: int = 0                    # attempts granted on top of max_attempts (a retry of a finished run)

    @property
    def started(self) -> int:
        """Attempts started so far (numbers the next one's branch)."""
        return max(self.attempts, default=0)

    @property
    def charged(self) -> int:
        return charged(self.attempts.values())


class Decision(StrEnum):
    MERGE = "merge"        # gated: merge it
    RETRY = "retry"        # back to pending, with feedback
    GIVE_UP = "give-up"    # attempts spent: failed
    AGAIN = "again"        # not the task's fault (interrupted): pending, nothing charged


@dataclass(frozen=True)
class Blocked:
    task: str
    reason: str


class Scheduler:
    """Task states of one run, and every decision about them."""

    def __init__(self, *, order: Sequence[str], dependencies: Mapping[str, Sequence[str]],
                 priority: Mapping[str, int], max_attempts: int) -> None:
        self.order = list(order)
        self.dependencies = {t: list(dependencies.get(t, ())) for t in self.order}
        self.priority = dict(priority)
        self.max_attempts = max_attempts
        self.tasks: dict[str, TaskState] = {t: TaskState() for t in self.order}

    # -- reading -------------------------------------------------------------------------------

    def status(self, task: str) -> TaskStatus:
        return self.tasks[task].status

    def running(self) -> list[str]:
        return [t for t in self.order if self.tasks[t].status in ACTIVE]

    def finished(self) -> bool:
        return all(s.status in DONE for s in self.tasks.values())

    def all_merged(self) -> bool:
        return all(s.status == TaskStatus.MERGED for s in self.tasks.values())

    def ready(self) -> list[str]:
        """Pending tasks whose dependencies have all merged; the longest chain of dependents first,
        plan order breaking ties."""
        ready = [t for t in self.order if self.tasks[t].status == TaskStatus.PENDING
                 and all(self.tasks[d].status == TaskStatus.MERGED for d in self.dependencies[t])]
        return sorted(ready, key=lambda t: -self.priority.get(t, 0))

    # -- what happened -------------------------------------------------------------------------

    def start(self, task: str) -> int:
        """TASK starts its next attempt; its number."""
        state = self.tasks[task]
        assert state.status == TaskStatus.PENDING, f"{task} is {state.status}, not pending"
        n = state.started + 1
        state.attempts[n] = AttemptKind.RUNNING
        state.status = TaskStatus.RUNNING
        return n

    def gating(self, task: str) -> None:
        if self.tasks[task].status == TaskStatus.RUNNING:
            self.tasks[task].status = TaskStatus.GATING

    def finish(self, task: str, n: int, kind: AttemptKind) -> Decision:
        """Attempt N of TASK ended as KIND: what follows."""
        state = self.tasks[task]
        state.attempts[n] = kind
        if kind == AttemptKind.INTERRUPTED:
            state.status = TaskStatus.PENDING
            return Decision.AGAIN
        if kind == AttemptKind.GATED:
            state.status = TaskStatus.MERGING
            return Decision.MERGE
        if kind == AttemptKind.MERGED:
            state.status = TaskStatus.MERGED
            return Decision.MERGE
        return self._retry_or_give_up(task)

    def eject(self, task: str, n: int, *, culprit: bool) -> Decision:
        """Attempt N's merge was taken out of the integration branch. The culprit's attempt is spent
        (its budget decides); one ejected only for being built on the culprit is redone freely."""
        state = self.tasks[task]
        state.attempts[n] = AttemptKind.EJECTED
        if culprit:
            return self._retry_or_give_up(task)
        state.status = TaskStatus.PENDING
        return Decision.RETRY

    def _retry_or_give_up(self, task: str) -> Decision:
        state = self.tasks[task]
        if state.charged >= self.max_attempts + state.budget:
            state.status = TaskStatus.FAILED
            return Decision.GIVE_UP
        state.status = TaskStatus.PENDING
        return Decision.RETRY

    def block_dependents(self) -> list[Blocked]:
        """Pending tasks that can never start, because a task they depend on failed or was blocked."""
        blocked: list[Blocked] = []
        for task in self.order:
            if self.tasks[task].status != TaskStatus.PENDING:
                continue
            bad = [d for d in self.dependencies[task] if self.tasks[d].status in (TaskStatus.FAILED,
                                                                                  TaskStatus.BLOCKED)]
            if bad:
                self.tasks[task].status = TaskStatus.BLOCKED
                blocked.append(Blocked(task, f"depends on '{bad[0]}', which {self.tasks[bad[0]].status}"))
        return blocked

    def stop_when_spent(self, *, spent: float, limit: float | None) -> list[Blocked]:
        """Past the spending limit no attempt starts: every task still waiting is blocked, saying why
        (attempts already running finish: their spend is committed to)."""
        if limit is None or spent < limit:
            return []
        reason = f"not started: the run reached its spending limit (${spent:.2f} spent, --max-cost {limit:g})"
        waiting = [t for t in self.order if self.tasks[t].status == TaskStatus.PENDING]
        for task in waiting:
            self.tasks[task].status = TaskStatus.BLOCKED
        return [Blocked(t, reason) for t in waiting]
