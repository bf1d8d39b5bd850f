"""Driving a run: the view, signals and the swarm, from a created or resumed run to its PR body."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path


from worktree_swarm.agents.base import Agent
from worktree_swarm.agents.registry import agent_for_task
from worktree_swarm.config import Config
from worktree_swarm.util.errors import EXIT_INTERRUPTED, DiskFullError, WswarmError
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.slots import open_pool
from worktree_swarm.git.worktrees import WorktreePool
from worktree_swarm.plan import Plan, Task
from worktree_swarm.commands.pr import render_pr
from worktree_swarm.train.integration import IntegrationMovedError
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.swarm.loop import Swarm, SwarmOptions
from worktree_swarm.util.types import RunId, Sha
from worktree_swarm.store import layout
from worktree_swarm.gate.cache import GateCache
from worktree_swarm.sandbox import Confinement, available as sandbox_available
from worktree_swarm.swarm import admission
from worktree_swarm.swarm.attempt import AttemptRunner
from worktree_swarm.swarm.executor import Executor, LocalExecutor
from worktree_swarm.swarm.mixed import MixedExecutor
from worktree_swarm.remote.setup import Distributed
from worktree_swarm.util.redact import secret_env_values
from worktree_swarm.store.events import EventKind

Notify = Callable[[str], None]
View = Callable[[RunStore], AbstractContextManager[object]]


class Interrupted(WswarmError):
    exit_code = EXIT_INTERRUPTED


@dataclass(frozen=True)
class RunResult:
    run_id: RunId
    integration_branch: str
    pr_path: Path
    all_merged: bool

    @property
    def exit_code(self) -> int:
        return 0 if self.all_merged else 1


def drive(repo: Repo, config: Config, plan: Plan, store: RunStore, options: SwarmOptions,
           agent_for: Callable[[Task], Agent], view: View | None, distributed: Distributed | None = None) -> RunResult:
    row = store.run()
    pool: WorktreePool | None = None
    executor: Executor | None = None
    # Agents here: every one of a local run's; beside workers, only those --agents asked for.
    here = distributed is None or options.agents > 0
    try:
        if here:
            # Slots start checking out now, while the scheduler reads the state and plans its first launches.
            pool = open_pool(repo, config.worktree, size=slots_needed(plan, store, options.agents),
                             fresh_root=layout.worktrees_dir(repo.state_dir),
                             start=Sha(row.integration_head or row.base))
        swarm: Swarm | None = None

        def recorded_head() -> Sha | None:
            """The integration head the run recorded (an attempt judges its own change from it)."""
            return swarm.train.head if swarm is not None else None

        pool_root = layout.worktrees_dir(repo.state_dir)
        # Code a confined agent wrote runs only in the sandbox: its setup and its checks, and every
        # probe and merge-result check of a run that holds such work.
        confined = any(agent_for(task).confined for task in plan)
        confinement = Confinement(sandboxed=confined and sandbox_available(), network=config.sandbox.network,
                                  pass_env=config.gate.pass_env)
        cache = GateCache(layout.gate_cache(repo.state_dir), enabled=config.gate.cache)
        remote: Executor | None = None
        if distributed is not None:     # attempts run on workers, through Redis and the git remote
            from worktree_swarm.remote.setup import open_executor

            executor = remote = open_executor(repo, store, distributed)
        if here:
            assert pool is not None
            runner = AttemptRunner(repo=repo, config=config, store=store, pool=pool, pool_root=pool_root,
                                   agent_for=agent_for, cache=cache, cancel=threading.Event(), run_id=RunId(row.id),
                                   agent_timeout=options.agent_timeout, secret_values=secret_env_values(os.environ),
                                   confinement=confinement, integration_head=recorded_head)
            throttle = admission.Throttle(admission.Admission(config.limits, state_dir=repo.state_dir),
                                          lambda kind, data: store.event(kind, **data))
            local = LocalExecutor(runner, agents=options.agents, throttle=throttle)
            executor = local if remote is None else MixedExecutor(local, remote, store=store)
        assert executor is not None
        swarm = Swarm(repo=repo, config=config, plan=plan, store=store, executor=executor, agent_for=agent_for,
                      options=options, pool_root=pool_root, confinement=confinement, cache=cache)
        pr_path = store.dir / layout.PR_BODY
        _stop_on_hangup()
        # The view closes after the state is final, so its last frame tells the truth.
        with (view(store) if view else nullcontext()):
            try:
                all_merged = swarm.run()
            except KeyboardInterrupt:
                store.set_run(state="interrupted")
                store.event(EventKind.RUN_INTERRUPTED, run=row.id)
                raise Interrupted(f"interrupted: run {row.id} saved",
                                  hint=f"continue with: wswarm resume {row.id}") from None
            except IntegrationMovedError:
                # Stopped, adopting nothing: the PR body says what was found; resume once it is put back.
                store.set_run(state="interrupted")
                store.event(EventKind.RUN_STOPPED, run=row.id, reason="the integration branch was moved by another process")
                pr_path.write_text(render_pr(store.run(), store.tasks(), store.attempts(), store.events()),
                                   encoding="utf-8")
                raise
            except DiskFullError as exc:
                # Nothing more can be written; the lock released at exit makes the run read as
                # interrupted, and every state change before this one is intact.
                raise DiskFullError(f"run {row.id} stopped: {exc.message}",
                                    hint=f"free some disk space, then continue with: wswarm resume {row.id}") from None
            pr_path.write_text(render_pr(store.run(), store.tasks(), store.attempts(), store.events()), encoding="utf-8")
            store.set_run(state="finished", finished=time.time())
            store.event(EventKind.RUN_FINISHED, run=row.id, all_merged=all_merged, pr=str(pr_path))
        return RunResult(RunId(row.id), row.integration_branch, pr_path, all_merged)
    finally:
        if executor is not None:
            executor.close()
        if pool is not None:
            pool.close()
        store.close()


def _stop_on_hangup() -> None:
    """SIGTERM and SIGHUP stop a run like Ctrl-C: agents run in sessions of their own and would
    otherwise outlive the orchestrator."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def agent_resolver(config: Config, plan: Plan, *, agent_cmd: str | None) -> Callable[[Task], Agent]:
    """Which agent runs each task; every one is checked before anything is created."""
    agents: dict[str, Agent] = {}
    for task in plan:
        agents[task.id] = agent_for_task(config, task, agent_cmd=agent_cmd)
    for agent in {id(a): a for a in agents.values()}.values():
        agent.check_available()
    return lambda task: agents[task.id]


def slots_needed(plan: Plan, store: RunStore, agents: int) -> int:
    """Worktrees the run can use at once: no more than AGENTS, nor than the unmerged tasks that can
    run side by side (a dependent starts only once what it depends on is merged)."""
    open_tasks = [t.id for t in store.tasks() if t.status != "merged" and t.id in plan]
    return max(1, min(agents, plan.width(open_tasks) if open_tasks else 1))


