"""Branch names for runs and task attempts, chosen so that no two can ever collide."""

from __future__ import annotations

from worktree_swarm.util.types import BranchName, RunId


def encode(task_id: str) -> str:
    """Flatten a task id into one ref/path component, injectively.

    git cannot hold both `a/b` and `a/b/c` as branches, so a `/` inside an id must not become a
    ref directory; `%` is escaped first so that `a%2Fb` and `a/b` stay distinct.
    """
    return task_id.replace("%", "%25").replace("/", "%2F")


def integration_branch(run_id: RunId) -> BranchName:
    return BranchName(f"wswarm/{run_id}/integration")


def task_branch(run_id: RunId, task_id: str, attempt: int) -> BranchName:
    return BranchName(f"wswarm/{run_id}/tasks/{encode(task_id)}/{attempt}")


def task_branch_prefix(run_id: RunId) -> str:
    return f"wswarm/{run_id}/tasks/"


def run_prefix(run_id: RunId) -> str:
    return f"wswarm/{run_id}/"
