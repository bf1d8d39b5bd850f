"""Which agent runs a task: the task's own `agent`, its role's, or the configured default (chosen
for the user when nothing is configured: the Claude Code CLI, else the built-in agent)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, replace

from worktree_swarm.agents.base import Agent
from worktree_swarm.agents.command import CommandAgent
from worktree_swarm.config import AGENT_KINDS, AgentConfig, Config, SandboxConfig
from worktree_swarm.util.errors import UsageError
from worktree_swarm.plan import Task

CHOOSE_HINT = ('set [agents] default = "claude" | "anthropic" in wswarm.toml (the Claude Code CLI, or the '
               "built-in agent with ANTHROPIC_API_KEY), or run a command as the agent: --agent-cmd 'COMMAND'")


def agent_for_task(config: Config, task: Task, *, agent_cmd: str | None) -> Agent:
    """The agent of one task, built but not yet checked (see Agent.check_available)."""
    if task.agent is not None:
        # Checked even when a `command` runs the task: a misspelt name must not go unnoticed.
        _require_known(config, task.agent, who=f"task {task.id!r}")
    if task.command:
        return CommandAgent(task.command, name=f"command ({task.id})")
    role = config.roles.get(task.type)
    name = task.agent or (role.agent if role else None) or config.agents.default
    return agent_named(config, name, who=f"task {task.id!r}", agent_cmd=agent_cmd)


def agent_for_type(config: Config, type_: str, *, agent_cmd: str | None) -> Agent:
    """The agent a planned task of TYPE would get (a planned task names no agent and no command)."""
    role = config.roles.get(type_)
    name = (role.agent if role else None) or config.agents.default
    who = f"the role {type_!r}" if role and role.agent else "planned tasks"
    return agent_named(config, name, who=who, agent_cmd=agent_cmd)


def agent_named(config: Config, name: str, *, who: str, agent_cmd: str | None) -> Agent:
    spec = config.agents.named.get(name)
    if spec is None and name in AGENT_KINDS and name != "command":
        spec = AgentConfig(name=name, kind=name)        # a built-in kind, used with its defaults
    if spec is not None:
        return make_agent(spec, sandbox=config.sandbox)
    _require_known(config, name, who=who)
    command = agent_cmd or config.agents.command
    if not command:
        raise UsageError(f"no agent is configured to run {who}", hint=CHOOSE_HINT)
    return CommandAgent(command)


def _require_known(config: Config, name: str, *, who: str) -> None:
    if name not in config.agents.named and name not in AGENT_KINDS:
        raise UsageError(f"{who} asks for agent {name!r}, which is not configured",
                         hint=f"define [agents.{name}] in wswarm.toml, or use one of {', '.join(AGENT_KINDS)}")


def make_agent(spec: AgentConfig, *, sandbox: SandboxConfig = SandboxConfig()) -> Agent:
    """An agent of SPEC's kind. Model-backed kinds are imported only when a run uses them."""
    if spec.kind == "command":
        if not spec.command:
            raise UsageError(f"agent {spec.name!r} has no command", hint=f"set command in [agents.{spec.name}]")
        return CommandAgent(spec.command, name=spec.name)
    if spec.kind == "anthropic":
        from worktree_swarm.agents.tool_loop import AnthropicAgent

        return AnthropicAgent(spec, network=sandbox.network, required=sandbox.required)
    if spec.kind == "claude":
        from worktree_swarm.agents.claude import ClaudeCodeAgent

        return ClaudeCodeAgent(spec)
    raise UsageError(f"agent {spec.name!r} is of kind {spec.kind!r}, which this version cannot run")


# -- nothing configured: the agent a user would expect -------------------------------------------------

@dataclass(frozen=True)
class DefaultAgent:
    """The configuration to run with, and the agent wswarm chose for tasks that name none."""

    config: Config
    chosen: str | None = None       # "claude" | "anthropic" when wswarm chose; None when configured
    reason: str = ""

    def note(self) -> str | None:
        """The line that says which agent was chosen, and how to choose another."""
        if self.chosen is None:
            return None
        return (f"agent: {self.chosen} — {self.reason}, as no agent is configured "
                "([agents] default in wswarm.toml chooses another)")


def default_agent(config: Config, *, agent_cmd: str | None, needed: bool,
                  recorded: str | None = None) -> DefaultAgent:
    """CONFIG, with the default agent chosen when none is configured and NEEDED (some task runs on
    the default): RECORDED (the choice a run already made), else the Claude Code CLI when it is on
    PATH, else the built-in agent when an API key is set. Neither: a UsageError, before anything
    is created or a model is paid."""
    if not needed or not _nothing_configured(config, agent_cmd=agent_cmd):
        return DefaultAgent(config)
    if recorded in ("claude", "anthropic"):
        return _choose(config, recorded, "chosen when the run started")
    if shutil.which("claude"):
        return _choose(config, "claude", "the Claude Code CLI found on PATH")
    if os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN"):
        return _choose(config, "anthropic", "the built-in agent (ANTHROPIC_API_KEY is set)")
    raise UsageError("no agent is configured, and there is none to choose: the Claude Code CLI (claude) is not "
                     "on PATH and ANTHROPIC_API_KEY is not set", hint=CHOOSE_HINT)


def uses_default(config: Config, tasks: Iterable[Task]) -> bool:
    """Whether any of TASKS would run on the default agent (no command, no agent, no role's agent)."""
    return any(not task.command and not task.agent and not getattr(config.roles.get(task.type), "agent", None)
               for task in tasks)


def types_use_default(config: Config, types: Iterable[str]) -> bool:
    """Whether a planned task of any of TYPES would run on the default agent."""
    return any(not getattr(config.roles.get(type_), "agent", None) for type_ in types)


def _nothing_configured(config: Config, *, agent_cmd: str | None) -> bool:
    agents = config.agents
    return (agents.default == "command" and "command" not in agents.named
            and not (agent_cmd or agents.command))


def _choose(config: Config, kind: str, reason: str) -> DefaultAgent:
    return DefaultAgent(replace(config, agents=replace(config.agents, default=kind)), chosen=kind, reason=reason)
