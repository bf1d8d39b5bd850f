"""`wswarm start`: validate the plan, configuration, base and agents; only then create the run and drive it."""

from __future__ import annotations

import os
import secrets
import tomllib
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from worktree_swarm.agents.registry import default_agent, uses_default
from worktree_swarm.config import Config, load_config
from worktree_swarm.util.errors import UsageError
from worktree_swarm.gate.detect import with_detected_checks
from worktree_swarm.git.refs import integration_branch
from worktree_swarm.git.repo import Repo, require_git
from worktree_swarm.plan import Plan, load_plan
from worktree_swarm.remote.setup import Distributed, check as check_distributed, chosen
from worktree_swarm.store import layout
from worktree_swarm.store.run_store import RunStore, ensure_writable, runs_dir
from worktree_swarm.swarm.loop import SwarmOptions
from worktree_swarm.util.types import RunId
from worktree_swarm.swarm.session import Notify, RunResult, View, agent_resolver, drive, slots_needed
from worktree_swarm.store.events import EventKind


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
    # Runs on workers (wswarm worker): each setting given here wins over [distributed]'s.
    redis_url: str | None = None        # --redis
    remote: str | None = None           # --remote: the git remote workers share code through
    lease: float | None = None          # --lease
    remote_agents: int | None = None    # --remote-agents: attempts on workers at once


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
    # --redis or a [distributed] section: attempts go to workers, and only an explicit --agents runs
    # some here beside them (the integrator's machine also merges and judges every attempt).
    distributed = _distributed(options, config)
    if distributed is not None:
        check_distributed(repo, distributed)
    local_default = 0 if distributed is not None else config.agents.concurrency
    swarm_options = SwarmOptions(
        agents=options.agents or local_default,
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
    run_id = new_run_id(time.time())
    branch = integration_branch(run_id)
    run_dir = runs_dir(repo.state_dir) / run_id
    opts = {"agents": swarm_options.agents, "max_attempts": swarm_options.max_attempts,
            "agent_timeout": swarm_options.agent_timeout, "agent_cmd": options.agent_cmd,
            "title": options.title or plan.goal or (options.plan_path.stem if options.plan_path else "plan"),
            "plan_path": str(options.plan_path or run_dir / layout.PLAN),
            "max_cost": swarm_options.max_cost, "default_agent": choice.chosen,
            # Where its attempts went, so a resume reconnects (never a password: see Distributed.record).
            "distributed": distributed.record() if distributed is not None else None,
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
        (run_dir / layout.PLAN).write_text(plan.to_file_json() + "\n", encoding="utf-8")
    if options.planner_usage:
        store.add_run_cost(float(options.planner_usage.get("cost_usd") or 0.0))
        store.event(EventKind.PLANNED, run=run_id, **options.planner_usage)
    store.event(EventKind.RUN_STARTED, run=run_id, base=base, branch=branch, tasks=len(plan), gate=detected)
    notify(f"run {run_id}: {len(plan)} tasks, {_where(plan, store, swarm_options.agents, distributed)}, "
           f"integration branch {branch}")
    if detected:
        notify(detected)
    return drive(repo, config, plan, store, swarm_options, agent_for, view, distributed=distributed)


def _distributed(options: StartOptions, config: Config) -> Distributed | None:
    return chosen(config.distributed, os.environ, redis_url=options.redis_url, remote=options.remote,
                  lease=options.lease, agents=options.remote_agents)


def _where(plan: Plan, store: RunStore, agents: int, distributed: Distributed | None) -> str:
    """Where the run's attempts run, for its first line: agents here, on workers, or both."""
    slots = slots_needed(plan, store, agents)
    here = f"{agents} agent{'s' if agents != 1 else ''}" + (
        f" (at most {slots} at once: the plan allows no more)" if slots < agents else "")
    if distributed is None:
        return here
    workers = f"up to {distributed.agents} attempt{'s' if distributed.agents != 1 else ''} on workers"
    return workers if agents == 0 else f"{workers} and {here} here"


def _the_plan(options: StartOptions) -> Plan:
    if options.plan is not None:
        return options.plan
    if options.plan_path is None:
        raise UsageError("no plan to run", hint="pass --plan plan.json, or a goal for the planner")
    return load_plan(options.plan_path)


def _has_gitmodules(repo: Repo, commit: str) -> bool:
    try:
        return ".gitmodules" in repo.pygit[commit].peel(pygit2.Commit).tree
    except (KeyError, ValueError):
        return False


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


def new_run_id(now: float) -> RunId:
    """`YYYYmmdd-HHMMSS-` and four characters: the milliseconds, then one random hex digit. Ids sort
    as runs were started, so "the newest run" is the last even of two started in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return RunId(f"{stamp}-{int(now * 1000) % 1000:03d}{secrets.token_hex(1)[0]}")
