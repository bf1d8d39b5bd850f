"""Removing a run's worktrees and task branches; the integration branch only when asked."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.util.errors import UsageError
from worktree_swarm.git.refs import run_prefix, task_branch_prefix
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.slot_files import count_slots, forget_slot, remove_slots
from worktree_swarm.git.worktrees import list_worktrees, prune_worktrees, remove_worktree
from worktree_swarm.store.run_store import RunStore, find_run, list_runs
from worktree_swarm.util.types import RunId


@dataclass(frozen=True)
class Cleaned:
    runs: list[str]
    worktrees: int
    branches: int
    slots: int | None = None        # removed with --slots
    slots_in_use: int = 0           # held by a run in progress, left alone
    slots_kept: int = 0             # without --slots: the reusable slots that stay


def clean(*, cwd: Path, run: str | None, all_runs: bool, integration: bool, forget: bool,
          slots: bool = False) -> Cleaned:
    """Clean one run (default: the newest) or every run; a run being driven right now is refused.
    With SLOTS, also every slot no running wswarm holds (with no runs at all, only those)."""
    repo = Repo.discover(cwd)
    if slots and run is None and not list_runs(repo.state_dir):
        removed, busy = remove_slots(repo)
        return Cleaned([], 0, 0, removed, busy)
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
                forget_slot(repo, info.path)     # a failed task's slot: its record goes with it
                worktrees += 1
        prefix = run_prefix(run_id) if integration else tasks
        for branch in repo.branches(prefix):
            repo.delete_branch(branch)
            branches += 1
        if forget:
            shutil.rmtree(folder)
    prune_worktrees(repo)
    if not slots:
        return Cleaned([f.name for f in folders], worktrees, branches, slots_kept=count_slots(repo))
    removed, busy = remove_slots(repo)
    return Cleaned([f.name for f in folders], worktrees, branches, removed, busy)
