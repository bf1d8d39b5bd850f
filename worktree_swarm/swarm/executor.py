"""Where attempts run, behind one interface: the loop hands out requests and collects outcomes.

The loop never knows which executor it talks to. `LocalExecutor` runs attempts on threads of this
process, in worktree slots of this machine, under this machine's admission limits; an executor on
other machines takes the same requests and gives back the same outcomes.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worktree_swarm.agents.base import News
from worktree_swarm.plan import Task
from worktree_swarm.store.run_store import AttemptRow
from worktree_swarm.swarm import admission
from worktree_swarm.swarm.attempt import AttemptRunner, Outcome
from worktree_swarm.util.types import BranchName, Sha


@dataclass(frozen=True)
class AttemptRequest:
    """Everything one attempt needs from the orchestrator."""

    task: Task
    n: int
    branch: BranchName
    start: Sha                   # the integration head it starts from
    feedback: str | None         # why the last attempt was sent back
    env: dict[str, str]
    dependencies: list[dict[str, Any]]   # what the tasks it depends on did

    @property
    def key(self) -> tuple[str, int]:
        return (self.task.id, self.n)


# What an executor says about a running attempt before its outcome: (task id, fields for its row).
Phase = tuple[str, dict[str, Any]]


class Executor(ABC):
    """Runs attempts; never decides what follows them and never writes task rows."""

    @abstractmethod
    def has_room(self) -> bool:
        """Whether it would start one more attempt right now."""

    @abstractmethod
    def submit(self, request: AttemptRequest) -> None:
        """Start REQUEST; its outcome comes back from `wait`."""

    @abstractmethod
    def running(self) -> int:
        """Attempts submitted whose outcome has not been handed back."""

    @abstractmethod
    def wait(self, timeout: float) -> list[Outcome]:
        """Outcomes of attempts that ended, waiting up to TIMEOUT seconds for the first."""

    @abstractmethod
    def phases(self) -> list[Phase]:
        """What running attempts reported since the last call (a worktree handed out, a gate started)."""

    @abstractmethod
    def stop(self) -> tuple[list[Outcome], list[BaseException]]:
        """Cancel every running attempt; how each ended, and the errors of those that could not end well."""

    def worktrees(self) -> dict[tuple[str, int], tuple[Path, Sha]]:
        """Running attempts whose worktree this machine can read: key -> (worktree, start). For
        conflict forecasts; an executor whose worktrees are elsewhere returns none."""
        return {}

    def here(self, key: tuple[str, int]) -> bool:
        """Whether the agent of submitted attempt KEY runs on this machine, where it can reach the
        user's checkout and the repository's shared state (an executor that cannot say: it does)."""
        return True

    def restart(self, key: tuple[str, int]) -> bool:
        """Stop the running attempt KEY (it ends as interrupted); False when this executor cannot."""
        return False

    def adopt(self, attempts: list[AttemptRow]) -> set[tuple[str, int]]:
        """Attempts a stopped orchestrator left running (rows still `running`) that go on without it and
        whose outcomes this executor can still collect: their keys; their outcomes come back from `wait`
        like those of attempts submitted here. An executor whose attempts die with the orchestrator
        (threads of this process) adopts none, and their tasks start again."""
        return set()

    def tell(self, key: tuple[str, int], item: dict[str, Any]) -> None:
        """Pass ITEM (news of merged work) to the running attempt KEY's agent; dropped if it has ended."""

    def release(self, outcome: Outcome, *, keep: bool) -> None:
        """The attempt is settled: free its worktree (KEEP it for inspection when its task failed)."""

    def cleanup_errors(self) -> list[str]:
        """Wait for the releases still under way; what went wrong with any of them."""
        return []

    def close(self) -> None:
        """Release what the executor holds once the run is over."""


class LocalExecutor(Executor):
    """Attempts on threads of this process, at most AGENTS at once and only while the machine's
    admission limits (load, memory, disk) let another start."""

    def __init__(self, runner: AttemptRunner, *, agents: int, throttle: admission.Throttle) -> None:
        self.runner = runner
        self.agents = agents
        self.throttle = throttle
        self._pool = ThreadPoolExecutor(max_workers=agents, thread_name_prefix="wswarm-agent")
        self._running: dict[Future[Outcome], tuple[str, int]] = {}
        self._phases: queue.SimpleQueue[Phase] = queue.SimpleQueue()
        self._reaper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wswarm-reaper")
        self._removals: list[Future[None]] = []
        self._lock = threading.Lock()
        self._where: dict[str, tuple[int, Path | None, Sha]] = {}   # running task -> (attempt, worktree, start)
        self._cancels: dict[tuple[str, int], threading.Event] = {}    # each running attempt's own stop
        runner.report = self._report

    def _report(self, task_id: str, fields: dict[str, Any]) -> None:
        if fields.get("worktree"):
            with self._lock:
                n, _, start = self._where[task_id]
                self._where[task_id] = (n, Path(fields["worktree"]), start)
        self._phases.put((task_id, fields))

    def worktrees(self) -> dict[tuple[str, int], tuple[Path, Sha]]:
        with self._lock:
            return {(task_id, n): (worktree, start) for task_id, (n, worktree, start) in self._where.items()
                    if worktree is not None}

    @property
    def cancel(self) -> threading.Event:
        return self.runner.cancel

    def has_room(self) -> bool:
        return len(self._running) < self.agents and self.throttle.admit(running=len(self._running))

    def submit(self, request: AttemptRequest) -> None:
        with self._lock:
            self._where[request.task.id] = (request.n, None, request.start)
        self.runner.news[request.key] = News(self.runner.store.attempt_dir(request.task.id, request.n) / "news.jsonl")
        cancel = self._cancels[request.key] = threading.Event()
        future = self._pool.submit(self.runner.run, request.task, request.n, request.branch, request.start,
                                   request.feedback, env=request.env, dependencies=request.dependencies, cancel=cancel)
        self._running[future] = request.key

    def running(self) -> int:
        return len(self._running)

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._running:
            return []
        done, _ = wait(self._running, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            key = self._running.pop(future)
            self.runner.news.pop(key, None)
            self._cancels.pop(key, None)
            with self._lock:
                self._where.pop(key[0], None)
        return [future.result() for future in done]

    def restart(self, key: tuple[str, int]) -> bool:
        cancel = self._cancels.get(key)
        if cancel is None:
            return False
        cancel.set()
        return True

    def tell(self, key: tuple[str, int], item: dict[str, Any]) -> None:
        news = self.runner.news.get(key)
        if news is not None:
            news.post(item)

    def phases(self) -> list[Phase]:
        out = []
        while True:
            try:
                out.append(self._phases.get_nowait())
            except queue.Empty:
                return out

    def stop(self) -> tuple[list[Outcome], list[BaseException]]:
        self.cancel.set()
        for cancel in list(self._cancels.values()):
            cancel.set()
        outcomes, errors = [], []
        for future in list(self._running):
            try:
                outcomes.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - every attempt is collected; the caller raises
                errors.append(exc)
        self._running.clear()
        return outcomes, errors

    def release(self, outcome: Outcome, *, keep: bool) -> None:
        if outcome.worktree is None:
            return
        # Removing a worktree costs as much as making one (43 ms at 5,000 files), scrubbing a slot
        # tens of ms; done in the loop it kept the next launch waiting (bench/README.md). A kept one
        # (a failed task's) goes to the pool too: a slot pool replaces it.
        self._removals.append(self._reaper.submit(self.runner.pool.release, outcome.worktree, keep=keep))

    def cleanup_errors(self) -> list[str]:
        for done in self._removals:
            done.exception()   # waits
        errors = [str(done.exception()).splitlines()[0] for done in self._removals if done.exception() is not None]
        self._removals.clear()
        return errors

    def close(self) -> None:
        self._reaper.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self.throttle.admission.close()
