"""Recovering after a crash: what the dead orchestrator left running or checked out."""

from __future__ import annotations

import shutil
from pathlib import Path


from worktree_swarm.util import proc
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.slot_files import keep_aside
from worktree_swarm.git.worktrees import list_worktrees, prune_worktrees, remove_worktree
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.util.types import RunId
from worktree_swarm.store import layout


def reconcile(repo: Repo, store: RunStore, run_id: RunId) -> tuple[int, int]:
    """After a crash: stop the agents and checks the dead orchestrator left running, and remove the
    worktrees of attempts that are over (a failed task's last one stays for inspection)."""
    killed = sum(proc.kill_orphan(pidfile) for pidfile in store.dir.rglob("*.pid") if _ours(pidfile, store.dir))
    keep = {t.worktree for t in store.tasks() if t.status == "failed" and t.worktree}
    # A failed task's slot the crash kept from being set aside; the other slots the dead run held
    # are reset by the next pool that claims them.
    keep_aside(repo, keep)
    removed = 0
    for info in list_worktrees(repo):
        if info.path.name.startswith(f"{run_id}--") and str(info.path) not in keep:
            remove_worktree(repo, info.path)
            removed += 1
    # A crash between making a folder and registering it leaves a folder git does not know.
    for folder in layout.worktrees_dir(repo.state_dir).glob(f"{run_id}--*"):
        if str(folder) not in keep and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
    prune_worktrees(repo)
    return killed, removed


def _ours(pidfile: Path, run_dir: Path) -> bool:
    """Whether wswarm wrote PIDFILE: not one an agent or a check left in the HOME or temp folder of a
    sandbox (it could name any process of the user's, to be killed by the next resume)."""
    parts = pidfile.relative_to(run_dir).parts[:-1]
    return not any(part in ("home", "tmp") and (parent == "scratch" or parent.endswith(".scratch"))
                   for parent, part in zip(parts, parts[1:]))


