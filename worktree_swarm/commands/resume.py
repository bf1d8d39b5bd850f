"""`wswarm resume`: continue an interrupted run; merged work is kept (after checking it), the rest starts again
(a distributed run's attempts still running on workers are collected, not started again).

What resume and retry share is here too: taking a run's lock, rebuilding what drives it from what the
run recorded, and handing it back to the swarm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from worktree_swarm.agents.base import Agent
from worktree_swarm.agents.registry import DefaultAgent, default_agent, uses_default
from worktree_swarm.config import Config, load_config
from worktree_swarm.util.errors import UsageError
from worktree_swarm.gate.detect import with_detected_checks
from worktree_swarm.git.repo import Repo, require_git
from worktree_swarm.plan import Plan, Task, plan_from_data
from worktree_swarm.remote.setup import Distributed, check as check_distributed, local_agents, recorded
from worktree_swarm.store.run_store import RunRow, RunStore, find_run
from worktree_swarm.swarm.loop import SwarmOptions
from worktree_swarm.util.types import RunId
from worktree_swarm.swarm.session import Notify, RunResult, View, agent_resolver, drive
from worktree_swarm.swarm.recovery import reconcile
from worktree_swarm.store.events import EventKind


@dataclass(frozen=True)
class Driving:
    """Everything a run is driven with, rebuilt from what it recorded and checked before any change."""

    config: Config
    detected: str | None        # the line announcing detected gate checks
    plan: Plan
    options: SwarmOptions
    agent_for: Callable[[Task], Agent]
    choice: DefaultAgent
    distributed: Distributed | None = None    # the run's attempts go to workers, as when it started


def resume(*, cwd: Path, run: str | None, notify: Notify, view: View | None = None) -> RunResult:
    """Continue an interrupted run: merged work is kept (after checking it), the rest starts again."""
    repo = Repo.discover(cwd)
    require_git(repo.root)
    store = locked_run(repo, run)
    try:
        row = store.run()
        if row.state == "finished":
            raise UsageError(f"run {row.id} has already finished; there is nothing to resume",
                             hint=f"retry its failed tasks with: wswarm retry {row.id}")
        store.migrate()
        row = store.run()
        if repo.branch_sha(row.integration_branch) is None and row.integration_head is None:
            # A run made before heads were recorded: nothing says where the branch was.
            raise UsageError(f"the integration branch {row.integration_branch} of run {row.id} is gone",
                             hint="it cannot be resumed; start a new run")
        driving = prepare(repo, row, row.options)
    except BaseException:
        store.close()
        raise
    return carry_on(repo, store, driving, notify, view, event=EventKind.RUN_RESUMED, says=f"resuming run {row.id}")


def locked_run(repo: Repo, run: str | None) -> RunStore:
    """The run RUN (default: the newest), its lock held by this process; refused while another
    process drives it."""
    store = RunStore.open(find_run(repo.state_dir, run))
    try:
        if not store.acquire_lock():
            raise UsageError(f"run {store.run().id} is being driven by another wswarm process right now",
                             hint="watch it with: wswarm status --watch")
    except BaseException:
        store.close()
        raise
    return store


def prepare(repo: Repo, row: RunRow, options: dict[str, Any]) -> Driving:
    """What drives run ROW with OPTIONS (its recorded options, or a retry's overrides of them): the
    configuration, the plan, the agents (each checked available). Changes nothing."""
    loaded = load_config(repo.root)
    plan = plan_from_data(json.loads(row.plan), source=f"run {row.id}")
    o = options
    choice = default_agent(loaded, agent_cmd=o.get("agent_cmd"), needed=uses_default(loaded, plan),
                           recorded=o.get("default_agent"))
    config, detected = with_detected_checks(choice.config, repo.root)
    # A distributed run's agents are those beside its workers (none in a run recorded before they could be).
    swarm_options = SwarmOptions(agents=local_agents(o), max_attempts=int(o["max_attempts"]),
                                 agent_timeout=float(o["agent_timeout"]),
                                 max_cost=None if o.get("max_cost") is None else float(o["max_cost"]))
    agent_for = agent_resolver(config, plan, agent_cmd=o.get("agent_cmd"))
    # The same Redis and remote (the password and the cluster key from the environment again), so
    # attempts still running on workers are collected rather than started again.
    distributed = recorded(o, os.environ)
    if distributed is not None:
        check_distributed(repo, distributed)
    return Driving(config, detected, plan, swarm_options, agent_for, choice, distributed)


def carry_on(repo: Repo, store: RunStore, driving: Driving, notify: Notify, view: View | None, *,
             event: EventKind, says: str, **data: Any) -> RunResult:
    """Drive the locked run in STORE again: marked running, what a dead orchestrator left behind
    cleared, EVENT (with DATA) logged and SAYS told, then the swarm until the PR body is written."""
    row = store.run()
    store.set_run(state="running", finished=None)
    killed, removed = reconcile(repo, store, RunId(row.id))
    store.event(event, run=row.id, orphans_killed=killed, worktrees_removed=removed, **data)
    if driving.choice.note():
        notify(str(driving.choice.note()))
    notify(says + (f": stopped {killed} orphaned agent or check process group(s)" if killed else ""))
    if driving.detected:
        notify(driving.detected)
    return drive(repo, driving.config, driving.plan, store, driving.options, driving.agent_for, view,
                 distributed=driving.distributed)
