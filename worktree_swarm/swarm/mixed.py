"""`MixedExecutor`: agents on this machine beside workers on others, behind the one `Executor` interface.

A distributed run given `--agents N` runs up to N attempts here, in this machine's worktree slots and
under its admission limits, and sends the others to workers. Local comes first while it has room: an
attempt here costs no transport (no push of its start commit, no fetch of its branch) and its
worktree can be forecast; what does not fit goes to the workers, up to their own bound. The loop
does not know which of the two ran an attempt; this executor remembers, to route what concerns a
running attempt (news, a restart) to the executor that has it.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from worktree_swarm.store.events import EventKind
from worktree_swarm.store.run_store import AttemptRow, RunStore
from worktree_swarm.swarm.attempt import Outcome
from worktree_swarm.swarm.executor import AttemptRequest, Executor, LocalExecutor, Phase
from worktree_swarm.util.types import Sha

# How long one look at the workers' streams may block while attempts also run here: the longest a
# local outcome waits to be seen (a remote one is seen as it arrives).
SLICE_S = 0.05


class MixedExecutor(Executor):
    """LOCAL first while it has room, else REMOTE. Every attempt run here is announced in the event
    log (`attempt-assigned` with `local: true` and this host), as a worker announces those it takes."""

    def __init__(self, local: LocalExecutor, remote: Executor, *, store: RunStore) -> None:
        self.local = local
        self.remote = remote
        self.store = store
        self.host = socket.gethostname()
        self._remote_keys: set[tuple[str, int]] = set()     # running attempts that went to workers

    def _of(self, key: tuple[str, int]) -> Executor:
        return self.remote if key in self._remote_keys else self.local

    def has_room(self) -> bool:
        return self.local.has_room() or self.remote.has_room()

    def submit(self, request: AttemptRequest) -> None:
        # Room is asked again: the loop's look may be a moment old. Without room on either side the
        # attempt goes to the workers, whose request may wait in Redis; an agent here never exceeds
        # this machine's agents or limits.
        if self.local.has_room():
            self.store.event(EventKind.ATTEMPT_ASSIGNED, request.task.id, attempt=request.n, local=True,
                             host=self.host)
            self.local.submit(request)
        else:
            self._remote_keys.add(request.key)
            self.remote.submit(request)

    def running(self) -> int:
        return self.local.running() + self.remote.running()

    def wait(self, timeout: float) -> list[Outcome]:
        if not self.remote.running():
            return self._seen(self.local.wait(timeout))
        if not self.local.running():
            return self._seen(self.remote.wait(timeout))
        # Both have attempts running: look at each in turn, the remote one blocking a slice at a time.
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            done = self.local.wait(0) + self.remote.wait(min(SLICE_S, max(left, 0.001)))
            if done or left <= SLICE_S or not (self.local.running() and self.remote.running()):
                return self._seen(done)

    def _seen(self, outcomes: list[Outcome]) -> list[Outcome]:
        for out in outcomes:
            self._remote_keys.discard((out.task.id, out.n))
        return outcomes

    def phases(self) -> list[Phase]:
        return self.local.phases() + self.remote.phases()

    def stop(self) -> tuple[list[Outcome], list[BaseException]]:
        remote_outcomes, remote_errors = self.remote.stop()
        local_outcomes, local_errors = self.local.stop()
        self._remote_keys.clear()
        return remote_outcomes + local_outcomes, remote_errors + local_errors

    def worktrees(self) -> dict[tuple[str, int], tuple[Path, Sha]]:
        return self.local.worktrees()       # a worker's worktrees cannot be read from here

    def here(self, key: tuple[str, int]) -> bool:
        return self._of(key).here(key)

    def restart(self, key: tuple[str, int]) -> bool:
        return self._of(key).restart(key)

    def adopt(self, attempts: list[AttemptRow]) -> set[tuple[str, int]]:
        """Attempts still on workers are taken over; those that ran here died with the orchestrator
        and start again, as in a local resume."""
        adopted = self.remote.adopt(attempts)
        self._remote_keys |= adopted
        return adopted

    def tell(self, key: tuple[str, int], item: dict[str, Any]) -> None:
        self._of(key).tell(key, item)

    def release(self, outcome: Outcome, *, keep: bool) -> None:
        # A worker's attempt leaves no worktree here (its outcome has none): only a local one frees a slot.
        (self.local if outcome.worktree is not None else self.remote).release(outcome, keep=keep)

    def cleanup_errors(self) -> list[str]:
        return self.local.cleanup_errors() + self.remote.cleanup_errors()

    def close(self) -> None:
        try:
            self.remote.close()
        finally:
            self.local.close()

