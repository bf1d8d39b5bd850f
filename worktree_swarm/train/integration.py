"""The merge train's one owner of the integration branch: merges in memory, ejections, and every
move of the ref, each from the head the run recorded and never from wherever the ref is found."""

from __future__ import annotations

from dataclasses import dataclass, field

import pygit2

from worktree_swarm.util.errors import EXIT_TASKS_FAILED, CommandError, RefMovedError
from worktree_swarm.git.merge_tree import merge_tree
from worktree_swarm.git.one_sided import line_down
from worktree_swarm.git.repo import Repo
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.util.types import BranchName, Sha
from worktree_swarm.store.events import EventKind


class IntegrationMovedError(RefMovedError):
    """Something other than the run moved its integration branch: the run stops, adopting nothing."""

    exit_code = EXIT_TASKS_FAILED


@dataclass(frozen=True)
class TrainResult:
    merge_commit: Sha | None          # None when the branch conflicts with the integration head
    integration_head: Sha             # the head it was merged onto (or conflicted with)
    conflicts: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def merge_message(task_id: str, description: str, body: str = "") -> str:
    """`wswarm: merge <task id> — <description>`, the description cut to one line."""
    first = description.strip().splitlines()[0] if description.strip() else ""
    if len(first) > 100:
        first = first[:99] + "…"
    return f"wswarm: merge {task_id} — {first}\n" + (f"\n{body.strip()}\n" if body.strip() else "")


class Integration:
    """The run's integration branch as the run recorded it. A move is written ahead (pending), made
    by compare-and-swap from the recorded head, then confirmed; a crash in between is settled by
    `recover` from where git says the ref is."""

    def __init__(self, repo: Repo, store: RunStore) -> None:
        self.repo = repo
        self.store = store
        run = store.run()
        self.branch = BranchName(run.integration_branch)
        # A run made before heads were recorded trusts the ref once, when it is first driven again.
        self.head = Sha(run.integration_head or self.repo.branch_sha(self.branch) or run.base)
        self._pending = run.integration_pending
        self._base = Sha(run.base)
        self._reached: set[str] | None = None      # `_reach`, once known

    def recover(self) -> list[str]:
        """Settle a move a crash interrupted, put back a deleted branch, and refuse a ref that moved
        elsewhere. Returns what was done, for the event log."""
        done: list[str] = []
        found = self.repo.branch_sha(self.branch)
        if self._pending is not None:
            if found == self._pending and self._our_merge(Sha(self._pending)):
                self.head = Sha(self._pending)
                done.append(f"finished recording a move to {self._pending[:12]} that a crash interrupted")
            self._pending = None
            self.store.set_run(integration_head=self.head, integration_pending=None)
        self.verify()
        return done

    def _our_merge(self, commit: Sha) -> bool:
        """Whether COMMIT is a line of merges the train would have made (one move may make several): on
        the recorded head, each of the head of an attempt that passed its gate onto the one before,
        with the tree merge-tree makes of the two. A pending value is only a claim (the state file is
        writable by anything running as the user); git's objects are checked instead of it being believed."""
        gated = {a.head for a in self.store.attempts() if a.outcome in ("gated", "merged") and a.head}
        chain: list[tuple[Sha, Sha, Sha]] = []      # (merge, ours, theirs), newest first
        at = commit
        while at != self.head:
            try:
                parents = [Sha(str(p)) for p in self.repo.pygit[at].peel(pygit2.Commit).parent_ids]
            except (KeyError, ValueError):
                return False
            if len(parents) != 2 or parents[1] not in gated or len(chain) >= len(gated):
                return False
            chain.append((at, parents[0], parents[1]))
            at = parents[0]
        for merge, ours, theirs in reversed(chain):
            merged = merge_tree(self.repo, ours, theirs)
            if merged.tree is None or merged.tree != self.repo.tree_of(merge):
                return False
        return bool(chain)

    def verify(self) -> None:
        """The ref is where the run left it; a deleted one is recreated from the recorded head."""
        found = self.repo.branch_sha(self.branch)
        if found == self.head:
            return
        if found is None:
            self.repo.update_ref(self.branch, self.head, None, reason="wswarm: recreate the deleted integration branch")
            self.store.event(EventKind.INTEGRATION_RESTORED, branch=self.branch, head=self.head)
            return
        self.store.event(EventKind.INTEGRATION_MOVED, branch=self.branch, expected=self.head, found=found)
        raise IntegrationMovedError(
            f"the integration branch {self.branch} was moved by something other than wswarm: it should be at "
            f"{self.head[:12]}, it is at {found[:12]}; nothing was merged on top of it",
            hint=f"inspect {found[:12]} (git log {self.head[:12]}..{found[:12]}); to continue the run, put the branch "
                 f"back (git update-ref refs/heads/{self.branch} {self.head}) and run wswarm resume")

    def _reach(self) -> set[str]:
        """The commits the recorded head reaches that the run's base does not, and the base: where a
        task's line of commits reaches them is its one merge base (`line_down`), found without the
        walk through the run's merges that libgit2's merge base takes (~5-12 ms at a few hundred)."""
        if self._reached is None:
            listed = self.repo.git("rev-list", self.head, "--not", self._base).stdout.split()
            self._reached = {self._base, *listed}
        return self._reached

    def move(self, new: Sha, *, reason: str, reaches: set[str] | None = None) -> None:
        """Move the branch from the recorded head to NEW (compare-and-swap), recording it first.
        REACHES: what `_reach` would find from NEW, when known."""
        self.verify()
        # On disk before the ref moves (git may make the move durable): a machine crash in between
        # must leave a claim `recover` can check, never a branch the run does not know it moved.
        self.store.set_run(integration_pending=new, durable=True)
        try:
            self.repo.update_ref(self.branch, new, self.head, reason=reason)
        except RefMovedError:
            self.store.set_run(integration_pending=None)
            self.verify()       # names what moved it
            raise
        self.head = new
        self._reached = reaches
        self.store.set_run(integration_head=new, integration_pending=None)

    def merge(self, theirs: Sha, message: str) -> TrainResult:
        """Merge THEIRS onto the recorded head with one merge commit; a conflict moves nothing."""
        results, error = self.merge_all([(theirs, message)])
        if error is not None:
            raise error
        return results[0]

    def merge_all(self, items: list[tuple[Sha, str]]) -> tuple[list[TrainResult], CommandError | None]:
        """Merge each (THEIRS, MESSAGE) of ITEMS in turn, each onto the merge before it (a conflicting
        one onto the same head as the next), with one move of the branch to the last merge: the outcomes
        that arrive together cost one synced state write and one ref update. The results of the items
        merged before git failed on one, and that failure (nothing after it is merged)."""
        self.verify()
        head = self.head
        reaches = set(self._reach())
        results: list[TrainResult] = []
        error: CommandError | None = None
        for theirs, message in items:
            try:
                line = line_down(self.repo, theirs, reaches)
            except (KeyError, ValueError, pygit2.GitError):
                line = None
            try:
                merged = merge_tree(self.repo, head, theirs, base=line[0] if line is not None and line[1] else None)
                if merged.tree is None:
                    results.append(TrainResult(None, head, merged.conflicts, merged.messages))
                    continue
                # What the new head reaches beyond the last: THEIRS's line above its base, or git's word.
                beyond = line[1] if line is not None else self.repo.git("rev-list", theirs, "--not", head).stdout.split()
                commit = self.repo.commit(merged.tree, [head, theirs], message)
            except CommandError as exc:
                error = exc
                break
            results.append(TrainResult(commit, head, messages=merged.messages))
            reaches.update(beyond)
            reaches.add(commit)
            head = commit
        if head != self.head:
            made = [message.splitlines()[0] for r, (_, message) in zip(results, items) if r.merge_commit is not None]
            reason = made[-1] if len(made) == 1 else f"{made[-1]} (and {len(made) - 1} merges before it)"
            self.move(head, reason=reason, reaches=reaches)
        return results, error
