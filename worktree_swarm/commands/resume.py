"""`wswarm resume`: continue an interrupted run; merged work is kept (after checking it), the rest starts again."""

from __future__ import annotations

import json
from pathlib import Path


from worktree_swarm.agents.registry import default_agent, uses_default
from worktree_swarm.config import load_config
from worktree_swarm.util.errors import UsageError
from worktree_swarm.gate.detect import with_detected_checks
from worktree_swarm.git.repo import Repo, require_git
from worktree_swarm.plan import plan_from_data
from worktree_swarm.store.run_store import RunStore, find_run
from worktree_swarm.swarm.loop import SwarmOptions
from worktree_swarm.util.types import RunId
from worktree_swarm.swarm.session import Notify, RunResult, View, agent_resolver, drive
from worktree_swarm.swarm.recovery import reconcile


def resume(*, cwd: Path, run: str | None, notify: Notify, view: View | None = None) -> RunResult:
    """Continue an interrupted run: merged work is kept (after checking it), the rest starts again."""
    repo = Repo.discover(cwd)
    require_git(repo.root)
    store = RunStore.open(find_run(repo.state_dir, run))
    try:
        row = store.run()
        if not store.acquire_lock():
            raise UsageError(f"run {row.id} is being driven by another wswarm process right now",
                             hint="watch it with: wswarm status --watch")
        if row.state == "finished":
            raise UsageError(f"run {row.id} has already finished; there is nothing to resume",
                             hint="start a new run, or see it with: wswarm status")
        store.migrate()
        row = store.run()
        if repo.branch_sha(row.integration_branch) is None and row.integration_head is None:
            # A run made before heads were recorded: nothing says where the branch was.
            raise UsageError(f"the integration branch {row.integration_branch} of run {row.id} is gone",
                             hint="it cannot be resumed; start a new run")
        loaded = load_config(repo.root)
        plan = plan_from_data(json.loads(row.plan), source=f"run {row.id}")
        o = row.options
        choice = default_agent(loaded, agent_cmd=o.get("agent_cmd"), needed=uses_default(loaded, plan),
                               recorded=o.get("default_agent"))
        config, detected = with_detected_checks(choice.config, repo.root)
        swarm_options = SwarmOptions(agents=int(o["agents"]), max_attempts=int(o["max_attempts"]),
                                     agent_timeout=float(o["agent_timeout"]),
                                     max_cost=None if o.get("max_cost") is None else float(o["max_cost"]))
        agent_for = agent_resolver(config, plan, agent_cmd=o.get("agent_cmd"))
    except BaseException:
        store.close()
        raise
    store.set_run(state="running")
    killed, removed = reconcile(repo, store, RunId(row.id))
    store.event("run-resumed", run=row.id, orphans_killed=killed, worktrees_removed=removed)
    if choice.note():
        notify(str(choice.note()))
    notify(f"resuming run {row.id}" + (f": stopped {killed} orphaned agent or check process group(s)"
                                       if killed else ""))
    if detected:
        notify(detected)
    return drive(repo, config, plan, store, swarm_options, agent_for, view)


