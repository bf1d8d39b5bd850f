"""Removing a run's worktrees and task branches; the integration branch only when asked."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.errors import UsageError
from worktree_swarm.git.refs import run_prefix, task_branch_prefix
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.worktrees import list_worktrees, prune_worktrees, remove_worktree
from worktree_swarm.state import RunStore, find_run, list_runs
from worktree_swarm.types import RunId


@dataclass(frozen=True)
class Cleaned:
    runs: list[str]
    worktrees: int
    branches: int


def clean(*, cwd: Path, run: str | None, all_runs: bool, integration: bool, forget: bool) -> Cleaned:
    """Clean one run (default: the newest) or every run; a run being driven right now is refused."""
    repo = Repo.discover(cwd)
    folders = list_runs(repo.state_dir) if all_runs else [find_run(repo.state_dir, run)]
    for folder in folders:
        store = RunStore.open(folder)
        try:
            if store.is_live():
                raise UsageError(f"run {folder.name} is running right now; it was not cleaned",
                                 hint="stop it first (Ctrl-C), then clean")
        finally:
            store.close()
    worktrees = branches = 0
    infos = list_worktrees(repo)
    for folder in folders:
        run_id = RunId(folder.name)
        tasks = task_branch_prefix(run_id)
        for info in infos:
            if (info.branch and info.branch.startswith(tasks)) or info.path.name.startswith(f"{run_id}--"):
                remove_worktree(repo, info.path)
                worktrees += 1
        prefix = run_prefix(run_id) if integration else tasks
        for branch in repo.branches(prefix):
            repo.delete_branch(branch)
            branches += 1
        if forget:
            shutil.rmtree(folder)
    prune_worktrees(repo)
    return Cleaned([f.name for f in folders], worktrees, branches)
