"""The merge train: one gated task branch at a time into the integration branch, in memory."""

from __future__ import annotations

from dataclasses import dataclass, field

from worktree_swarm.git.merge import commit_tree, merge_tree
from worktree_swarm.git.repo import Repo
from worktree_swarm.types import BranchName, Sha


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


def merge_branch(repo: Repo, *, integration: BranchName, theirs: Sha, message: str) -> TrainResult:
    """Merge THEIRS into INTEGRATION with one merge commit; the ref moves by compare-and-swap.

    Nothing is checked out; a conflict leaves the integration branch exactly where it was.
    """
    ours = repo.branch_sha(integration)
    if ours is None:
        raise LookupError(f"integration branch {integration} does not exist")
    merged = merge_tree(repo, ours, theirs)
    if merged.tree is None:
        return TrainResult(None, ours, merged.conflicts, merged.messages)
    commit = commit_tree(repo, merged.tree, [ours, theirs], message)
    repo.update_ref(integration, commit, ours, reason=message.splitlines()[0])
    return TrainResult(commit, ours, messages=merged.messages)
