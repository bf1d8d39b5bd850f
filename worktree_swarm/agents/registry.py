"""Which agent runs a task: the task's own `agent`, its role's, or the configured default."""

from __future__ import annotations

from worktree_swarm.agents.base import Agent
from worktree_swarm.agents.command import CommandAgent
from worktree_swarm.config import AGENT_KINDS, AgentConfig, Config, SandboxConfig
from worktree_swarm.errors import UsageError
from worktree_swarm.plan import Task


def agent_for_task(config: Config, task: Task, *, agent_cmd: str | None) -> Agent:
    """The agent of one task, built but not yet checked (see Agent.check_available)."""
    if task.command:
        return CommandAgent(task.command, name=f"command ({task.id})")
    role = config.roles.get(task.type)
    name = task.agent or (role.agent if role else None) or config.agents.default
    spec = config.agents.named.get(name)
    if spec is None and name in AGENT_KINDS and name != "command":
        spec = AgentConfig(name=name, kind=name)        # a built-in kind, used with its defaults
    if spec is not None:
        return make_agent(spec, sandbox=config.sandbox)
    if name != "command":
        raise UsageError(f"task {task.id!r} asks for agent {name!r}, which is not configured",
                         hint=f"define [agents.{name}] in wswarm.toml, or use one of {', '.join(AGENT_KINDS)}")
    command = agent_cmd or config.agents.command
    if not command:
        raise UsageError(f"no agent is configured to run task {task.id!r}",
                         hint="pass --agent-cmd 'COMMAND', set [agents] command in wswarm.toml, "
                              "or give the task a `command` in the plan")
    return CommandAgent(command)


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
