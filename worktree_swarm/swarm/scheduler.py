"""The scheduler's decisions, and nothing else: which task runs next, what an attempt's end means for
its task (merge, retry, give up), who is blocked, who is held back and why, and when the money is
spent. Pure: no git, no files, no clock of its own; the orchestrator feeds it what happened (and the
time) and carries out what it decides.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from worktree_swarm.util.globs import TrackedFiles, glob_regex, patterns_overlap


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


# Restarts (on_forecast = restart) are not charged: without a bound, a task heading for a conflict each
# time it starts (an agent that writes one, or two that keep meeting) would be stopped and started for
# as long as the other side runs. Past this many, its attempt runs on and is only told.
MAX_RESTARTS = 3


@dataclass
class TaskState:
    status: TaskStatus = TaskStatus.PENDING
    attempts: dict[int, AttemptKind] = field(default_factory=dict)   # n -> how it ended
    budget: int = 0                    # attempts granted on top of max_attempts (a retry of a finished run)
    known: set[str] = field(default_factory=set)   # paths its attempts are known to change
    start_head: str | None = None      # the integration head its last attempt started from
    failed_head: str | None = None     # set when that attempt failed: a retry from this head goes last …
    waits_for: set[str] = field(default_factory=set)   # … and waits for the overlapping work then running
    wait_until: float = 0.0            # to settle, but not past this time
    retrying: bool = False             # its last attempt failed with its files unknown (see `pick`)
    start_order: int = 0               # how many integration heads came before its last attempt's start
    restarts: int = 0                  # attempts stopped early to start again (on_forecast = restart)

    @property
    def started(self) -> int:
        """Attempts started so far (numbers the next one's branch)."""
        return max(self.attempts, default=0)

    @property
    def charged(self) -> int:
        return charged(self.attempts.values())


class Overlap(StrEnum):
    """What to do with a ready task whose files overlap a running task's."""

    AVOID = "avoid"            # start tasks that overlap nothing first; an overlapping one only when an agent would idle
    SERIALIZE = "serialize"    # never two overlapping tasks at once
    IGNORE = "ignore"          # start in priority order whatever they touch; retry at once


@dataclass(frozen=True)
class Held:
    """A ready task not started, and why."""

    task: str
    waiting_for: str     # the running task it waits for
    reason: str          # one line, e.g. "both change pricing.py"


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
                 priority: Mapping[str, int], max_attempts: int, files: Mapping[str, Sequence[str]] | None = None,
                 tracked: Collection[str] = (), overlap: Overlap = Overlap.IGNORE, retry_wait: float = 0.0) -> None:
        self.order = list(order)
        self.dependencies = {t: list(dependencies.get(t, ())) for t in self.order}
        self.priority = dict(priority)
        self.max_attempts = max_attempts
        self.tasks: dict[str, TaskState] = {t: TaskState() for t in self.order}
        self.files = {t: list((files or {}).get(t, ())) for t in self.order}   # declared patterns
        self.tracked = TrackedFiles(tracked)     # the base's files, for "can two patterns match one path"
        self.overlap = overlap
        self.retry_wait = retry_wait
        self._heads: dict[str, int] = {}     # every head an attempt started from -> the order it appeared in

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
        tasks, deps = self.tasks, self.dependencies
        ready = [t for t in self.order if tasks[t].status == TaskStatus.PENDING
                 and (not deps[t] or all(tasks[d].status == TaskStatus.MERGED for d in deps[t]))]
        return sorted(ready, key=lambda t: -self.priority.get(t, 0))

    # -- overlap -------------------------------------------------------------------------------

    def overlaps(self, a: str, b: str, *, unknown: bool = False) -> str | None:
        """What tasks A and B may both change, phrased for a message; None when nothing says they do.

        Declared `files` patterns that can match a common path, and the paths their attempts are known to
        have changed. A task with neither is UNKNOWN: it overlaps everything when UNKNOWN is true."""
        ka, kb = self.tasks[a].known, self.tasks[b].known
        pa, pb = self.files[a], self.files[b]
        if both := sorted(ka & kb):
            return _paths(both)
        for known, patterns in ((ka, pb), (kb, pa)):
            regexes = [glob_regex(p) for p in patterns]
            if hits := sorted(path for path in known if any(r.fullmatch(path) for r in regexes)):
                return _paths(hits)
        for p in pa:
            for q in pb:
                if where := patterns_overlap(p, q, self.tracked):
                    return where
        if unknown and not (ka or pa):
            return "its files are not known"
        return None

    def learn(self, task: str, paths: Iterable[str]) -> None:
        """TASK's attempts are known to change PATHS (a finished attempt's diff, a running one's snapshot)."""
        self.tasks[task].known.update(paths)

    def _waiting(self, task: str, running: list[str], *, now: float) -> Held | None:
        """Its last attempt failed while overlapping work was running: a retry before that work settles
        would most likely fail the same way (it is often what the attempt lacked). It waits for it to
        settle, but not past retry_wait."""
        state = self.tasks[task]
        if self.overlap == Overlap.IGNORE or now >= state.wait_until:
            return None
        for other in running:
            if other in state.waits_for:
                where = self.overlaps(task, other, unknown=True)
                why = ("its last attempt failed while this task ran" +
                       ("" if where in (None, "its files are not known") else f"; both change {where}"))
                return Held(task, other, why)
        return None

    def _blocking(self, task: str, running: _Running) -> Held | None:
        """The first running task (in plan order) that TASK overlaps, as a Held; None when none."""
        for other in running.candidates(task):
            if other != task and (where := self.overlaps(task, other)):
                return Held(task, other, f"both change {where}")
        return None

    def _after_other_retry(self, task: str, retrying: list[str]) -> str | None:
        """Tasks whose attempts failed with nothing known of their files retry one at a time, in priority
        order: the work one lacked is often another's (a replayed history, where a change applies only on
        top of an earlier one), and retrying them side by side fails them all again at once. The retry
        (of RETRYING, those running now) TASK waits for, or None."""
        if self.overlap == Overlap.IGNORE or not self.tasks[task].retrying:
            return None
        return next((other for other in retrying if other != task), None)

    def _retrying_now(self) -> list[str]:
        return [t for t, state in self.tasks.items() if state.retrying and state.status in ACTIVE]

    def _stale(self, task: str, *, head: str, now: float) -> bool:
        """Its last attempt failed on HEAD (and the wait for a new head is not over)."""
        state = self.tasks[task]
        return self.overlap != Overlap.IGNORE and state.failed_head == head and now < state.wait_until

    def pick(self, *, head: str, now: float) -> str | None:
        """The ready task to start next, beside what runs now; None when none should start yet.

        A task whose last attempt failed on the current head goes after every other ready task: what
        they merge moves the head, and the work it lacked is often theirs."""
        fallback = None
        ready, running, retrying = self.ready(), _Running(self), self._retrying_now()
        stale = [t for t in ready if self._stale(t, head=head, now=now)]
        for task in self._in_turn([t for t in ready if t not in stale]) + self._in_turn(stale):
            if self._waiting(task, running.order, now=now) or self._after_other_retry(task, retrying):
                continue
            if self.overlap == Overlap.IGNORE or self._blocking(task, running) is None:
                return task
            if fallback is None:
                fallback = task
        return fallback if self.overlap == Overlap.AVOID else None

    def _in_turn(self, tasks: list[str]) -> list[str]:
        """TASKS, the retries that go one at a time in the order of the heads their failed attempts
        started from, oldest first, priority breaking ties (each in a place one of them held): the one
        that saw least of what merged since is the likeliest to succeed now. By priority alone, the first
        of a chain replayed in reverse spends every attempt before the task it needs has had a second."""
        turns = iter(sorted((t for t in tasks if self.tasks[t].retrying), key=lambda t: self.tasks[t].start_order))
        return [next(turns) if self.tasks[t].retrying else t for t in tasks]

    def held(self, *, head: str, now: float) -> list[Held]:
        """Ready tasks `pick` passes over right now, each with the task it waits for."""
        ready, running, retrying = self.ready(), _Running(self), self._retrying_now()
        out: list[Held] = []
        overlapping: set[str] = set()    # held by overlap alone
        free = False                     # some ready task is held by nothing
        for task in ready:
            state = self.tasks[task]
            if not (state.waits_for or state.retrying or state.known or self.files[task]):
                free = True     # nothing to wait out, no files to overlap: every look below says so, slower
                continue
            if held := self._waiting(task, running.order, now=now):
                out.append(held)
            elif other := self._after_other_retry(task, retrying):
                out.append(Held(task, other, "its last attempt failed; such retries go one at a time"))
            elif self.overlap != Overlap.IGNORE and (held := self._blocking(task, running)) is not None:
                out.append(held)
                overlapping.add(task)
            else:
                free = True
        if self.overlap == Overlap.AVOID and not free:
            # avoid: a task held by overlap alone waits only while one that overlaps nothing goes first
            out = [h for h in out if h.task not in overlapping]
        return out

    # -- what happened -------------------------------------------------------------------------

    def start(self, task: str, *, head: str | None = None) -> int:
        """TASK starts its next attempt from integration HEAD; its number."""
        state = self.tasks[task]
        assert state.status == TaskStatus.PENDING, f"{task} is {state.status}, not pending"
        n = state.started + 1
        state.attempts[n] = AttemptKind.RUNNING
        state.status = TaskStatus.RUNNING
        state.start_head = head
        state.start_order = self._heads.setdefault(head, len(self._heads)) if head is not None else 0
        state.failed_head = None
        state.waits_for = set()
        return n

    def gating(self, task: str) -> None:
        if self.tasks[task].status == TaskStatus.RUNNING:
            self.tasks[task].status = TaskStatus.GATING

    def finish(self, task: str, n: int, kind: AttemptKind, *, now: float = 0.0) -> Decision:
        """Attempt N of TASK ended as KIND (at time NOW): what follows."""
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
            state.retrying = False
            return Decision.MERGE
        decision = self._retry_or_give_up(task)
        if decision == Decision.RETRY and n == state.started:
            state.failed_head, state.wait_until = state.start_head, now + self.retry_wait
            # A conflict met work already merged: the retry starts from the head that holds it. Any other
            # failure waits for the overlapping work running now (what it lacked may be theirs).
            state.waits_for = set() if kind == AttemptKind.CONFLICT else {
                other for other in self.running() if other != task and self.overlaps(task, other, unknown=True)}
            state.retrying = kind != AttemptKind.CONFLICT and not (state.known or self.files[task])
        return decision

    def defer(self, task: str, *, until: str, head: str, now: float) -> None:
        """Pending TASK does not start again until task UNTIL settles (up to retry_wait), and goes after
        other ready tasks while the head is still HEAD."""
        state = self.tasks[task]
        state.failed_head, state.waits_for, state.wait_until = head, {until}, now + self.retry_wait

    def may_restart(self, task: str) -> bool:
        """Whether TASK's running attempt may still be stopped to start again (MAX_RESTARTS)."""
        return self.tasks[task].restarts < MAX_RESTARTS

    def restarted(self, task: str) -> None:
        """TASK's running attempt was stopped to start again."""
        self.tasks[task].restarts += 1

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


class _Running:
    """The tasks running now, indexed by the paths they declare or are known to change, so that a ready
    task is compared (`Scheduler.overlaps`, which decides) only with those that may overlap it: at a
    thousand ready tasks and dozens running, comparing every pair on every turn of the loop was most of
    the loop's time."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.order = sched.running()
        self._rank = {t: i for i, t in enumerate(self.order)}
        self._anywhere: set[str] = set()               # a pattern read only as a pattern: compared always
        self._at: dict[str, set[str]] = {}             # a path -> tasks with a path or folder equal to it
        self._under: dict[str, set[str]] = {}          # a folder -> tasks with a path inside it
        for task in self.order:
            paths = _plain_paths(sched, task)
            if paths is None:
                self._anywhere.add(task)
                continue
            for path in paths:
                self._at.setdefault(path, set()).add(task)
                for folder in _folders(path):
                    self._under.setdefault(folder, set()).add(task)

    def candidates(self, task: str) -> list[str]:
        """The running tasks TASK may overlap, in plan order: those whose paths or folders are TASK's,
        inside TASK's or around them, and any that a plain path cannot stand for."""
        paths = _plain_paths(self.sched, task)
        if paths is None or not self.order:
            return self.order
        found = set(self._anywhere)
        for path in paths:
            found.update(self._at.get(path, ()))
            found.update(self._under.get(path, ()))
            for folder in _folders(path):
                found.update(self._at.get(folder, ()))
        return sorted(found, key=self._rank.__getitem__)


_GLOB = frozenset("*?[]\\")


def _plain_paths(sched: Scheduler, task: str) -> list[str] | None:
    """TASK's declared patterns and known paths as plain paths (a pattern without wildcards matches
    itself and what is under it), or None when one of its patterns is more than a plain path."""
    out = list(sched.tasks[task].known)
    for pattern in sched.files[task]:
        path = pattern.removeprefix("./").rstrip("/")
        if (path != pattern.strip().removeprefix("./").rstrip("/") or any(c in _GLOB for c in path)
                or any(part in ("", ".", "..") for part in path.split("/"))):
            return None     # compared the long way: read as the gate reads it, it may stand for more
        out.append(path)
    return out


def _folders(path: str) -> list[str]:
    """The folders PATH is inside: "a/b/c" -> "a", "a/b"."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _paths(paths: Sequence[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
