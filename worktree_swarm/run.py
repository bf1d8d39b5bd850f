"""A run from start to finish: validate everything, create state and branch, drive the swarm, deliver."""

from __future__ import annotations

import json
import secrets
import tomllib
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from worktree_swarm import proc
from worktree_swarm.agents.base import Agent
from worktree_swarm.agents.registry import agent_for_task, default_agent, uses_default
from worktree_swarm.config import Config, load_config
from worktree_swarm.errors import EXIT_INTERRUPTED, DiskFullError, UsageError, WswarmError
from worktree_swarm.gate.detect import with_detected_checks
from worktree_swarm.git.refs import integration_branch
from worktree_swarm.git.repo import Repo, require_git
from worktree_swarm.git.slot_files import keep_aside
from worktree_swarm.git.slots import open_pool
from worktree_swarm.git.worktrees import WorktreePool, list_worktrees, prune_worktrees, remove_worktree
from worktree_swarm.plan import Plan, Task, load_plan, plan_from_data
from worktree_swarm.pr import render_pr
from worktree_swarm.merge import IntegrationMovedError
from worktree_swarm.state import RunStore, ensure_writable, find_run, runs_dir
from worktree_swarm.swarm import Swarm, SwarmOptions
from worktree_swarm.types import RunId, Sha

Notify = Callable[[str], None]
View = Callable[[RunStore], AbstractContextManager[object]]


class Interrupted(WswarmError):
    exit_code = EXIT_INTERRUPTED


@dataclass(frozen=True)
class StartOptions:
    plan_path: Path | None = None       # a plan file, or
    plan: Plan | None = None            # a plan already built (by the planner, which told the user
                                        # which agent and configuration are used)
    base: str = "HEAD"
    agents: int | None = None
    max_attempts: int | None = None
    agent_cmd: str | None = None
    timeout: float | None = None
    title: str | None = None            # the run's (and the PR's) title; default: the plan's goal
    max_cost: float | None = None       # USD; default [limits] max_cost_usd
    planner_usage: Mapping[str, Any] | None = None   # what planning it cost: Planned.usage()
    default_agent: str | None = None    # the agent the planner chose for tasks naming none (and said so)


@dataclass(frozen=True)
class RunResult:
    run_id: RunId
    integration_branch: str
    pr_path: Path
    all_merged: bool

    @property
    def exit_code(self) -> int:
        return 0 if self.all_merged else 1


def worktrees_dir(repo: Repo) -> Path:
    return repo.state_dir / "worktrees"


def start(*, cwd: Path, options: StartOptions, notify: Notify, view: View | None = None) -> RunResult:
    """Validate the plan, config, base and agents; only then create the run and drive it."""
    repo = Repo.discover(cwd)
    require_git(repo.root)
    loaded = load_config(repo.root)
    plan = _the_plan(options)
    choice = default_agent(loaded, agent_cmd=options.agent_cmd, needed=uses_default(loaded, plan),
                           recorded=options.default_agent)
    if options.plan is None:        # a planned plan: the planner has said both already
        for line in (choice.note(), config_note(repo.root, loaded)):
            if line:
                notify(line)
    config, detected = with_detected_checks(choice.config, repo.root)
    base = repo.resolve_commit(options.base)
    repo.check_identity()
    swarm_options = SwarmOptions(
        agents=options.agents or config.agents.concurrency,
        max_attempts=options.max_attempts or config.agents.max_attempts,
        agent_timeout=options.timeout or config.agents.timeout,
        max_cost=options.max_cost if options.max_cost is not None else config.limits.max_cost_usd,
    )
    agent_for = agent_resolver(config, plan, agent_cmd=options.agent_cmd)
    if _has_gitmodules(repo, base) and not config.worktree.setup:
        notify("warning: this repository has submodules, and task worktrees do not check them out: agents see "
               "them empty (set [worktree] setup = \"git submodule update --init\" to fill them)")
    if has_uncommitted_work(repo):
        notify(f"warning: {repo.root} has uncommitted changes; they are not included "
               f"(tasks start from {options.base} = {base[:12]})")

    ensure_writable(repo.state_dir)
    run_id = RunId(time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2))
    branch = integration_branch(run_id)
    run_dir = runs_dir(repo.state_dir) / run_id
    opts = {"agents": swarm_options.agents, "max_attempts": swarm_options.max_attempts,
            "agent_timeout": swarm_options.agent_timeout, "agent_cmd": options.agent_cmd,
            "title": options.title or plan.goal or (options.plan_path.stem if options.plan_path else "plan"),
            "plan_path": str(options.plan_path or run_dir / "plan.json"),
            "max_cost": swarm_options.max_cost, "default_agent": choice.chosen,
            # The PR's base must be a branch: HEAD means the branch checked out right now.
            "base_branch": repo.current_branch() if options.base == "HEAD" else options.base}
    store = RunStore.create(run_dir, run_id=run_id, base=base, base_ref=options.base, integration_branch=branch,
                            plan_json=plan.to_json(), task_ids=[str(t) for t in plan.ids()], options=opts)
    try:
        store.acquire_lock()
        repo.update_ref(branch, base, None, reason=f"wswarm: start run {run_id}")
    except BaseException:
        store.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if options.plan_path is None:
        (run_dir / "plan.json").write_text(plan.to_file_json() + "\n", encoding="utf-8")
    if options.planner_usage:
        store.add_run_cost(float(options.planner_usage.get("cost_usd") or 0.0))
        store.event("planned", run=run_id, **options.planner_usage)
    store.event("run-started", run=run_id, base=base, branch=branch, tasks=len(plan), gate=detected)
    slots = slots_needed(plan, store, swarm_options.agents)
    at_once = f" (at most {slots} at once: the plan allows no more)" if slots < swarm_options.agents else ""
    notify(f"run {run_id}: {len(plan)} tasks, {swarm_options.agents} agents{at_once}, integration branch {branch}")
    if detected:
        notify(detected)
    return _drive(repo, config, plan, store, swarm_options, agent_for, view)


def _the_plan(options: StartOptions) -> Plan:
    if options.plan is not None:
        return options.plan
    if options.plan_path is None:
        raise UsageError("no plan to run", hint="pass --plan plan.json, or a goal for the planner")
    return load_plan(options.plan_path)


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
    killed, removed = _reconcile(repo, store, RunId(row.id))
    store.event("run-resumed", run=row.id, orphans_killed=killed, worktrees_removed=removed)
    if choice.note():
        notify(str(choice.note()))
    notify(f"resuming run {row.id}" + (f": stopped {killed} orphaned agent or check process group(s)"
                                       if killed else ""))
    if detected:
        notify(detected)
    return _drive(repo, config, plan, store, swarm_options, agent_for, view)


def _drive(repo: Repo, config: Config, plan: Plan, store: RunStore, options: SwarmOptions,
           agent_for: Callable[[Task], Agent], view: View | None) -> RunResult:
    row = store.run()
    pool: WorktreePool | None = None
    try:
        # Slots start checking out now, while the scheduler reads the state and plans its first launches.
        pool = open_pool(repo, config.worktree, size=slots_needed(plan, store, options.agents),
                         fresh_root=worktrees_dir(repo), start=Sha(row.integration_head or row.base))
        swarm = Swarm(repo=repo, config=config, plan=plan, store=store, pool=pool,
                      agent_for=agent_for, options=options, pool_root=worktrees_dir(repo))
        pr_path = store.dir / "pr.md"
        _stop_on_hangup()
        # The view closes after the state is final, so its last frame tells the truth.
        with (view(store) if view else nullcontext()):
            try:
                all_merged = swarm.run()
            except KeyboardInterrupt:
                store.set_run(state="interrupted")
                store.event("run-interrupted", run=row.id)
                raise Interrupted(f"interrupted: run {row.id} saved",
                                  hint=f"continue with: wswarm resume {row.id}") from None
            except IntegrationMovedError:
                # Stopped, adopting nothing: the PR body says what was found; resume once it is put back.
                store.set_run(state="interrupted")
                store.event("run-stopped", run=row.id, reason="the integration branch was moved by another process")
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
            store.event("run-finished", run=row.id, all_merged=all_merged, pr=str(pr_path))
        return RunResult(RunId(row.id), row.integration_branch, pr_path, all_merged)
    finally:
        if pool is not None:
            pool.close()
        store.close()


def _has_gitmodules(repo: Repo, commit: str) -> bool:
    try:
        return ".gitmodules" in repo.pygit[commit].peel(pygit2.Commit).tree
    except (KeyError, ValueError):
        return False


def _reconcile(repo: Repo, store: RunStore, run_id: RunId) -> tuple[int, int]:
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
    for folder in worktrees_dir(repo).glob(f"{run_id}--*"):
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


def has_uncommitted_work(repo: Repo) -> bool:
    """Uncommitted changes in the user's checkout, besides an untracked wswarm.toml (read from the
    checkout by wswarm itself, so it is not left out of anything)."""
    out = repo.git("--no-optional-locks", "status", "--porcelain", "--untracked-files=normal").stdout
    return any(line.strip() and line != "?? wswarm.toml" for line in out.splitlines())


def config_note(root: Path, config: Config) -> str | None:
    """One line when wswarm.toml is used while pyproject.toml also has a [tool.wswarm] table."""
    if config.source is None or config.source.name != "wswarm.toml":
        return None
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    tool = data.get("tool")
    if not isinstance(tool, dict) or "wswarm" not in tool:
        return None
    return "config: wswarm.toml is used; the [tool.wswarm] table in pyproject.toml is ignored"
