"""What an agent is told: its role, its task, what its dependencies did, why it was sent back."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from worktree_swarm.plan import Task

DEFAULT_ROLES: dict[str, str] = {
    "analysis": "You analyse the codebase and record what you find in a file the other tasks can read. "
                "Change no code.",
    "frontend": "You are a frontend engineer. Keep components small and their public props stable.",
    "backend": "You are a backend engineer. Keep interfaces stable and handle errors explicitly.",
    "testing": "You write and fix tests. Tests must fail before the fix they cover and pass after it.",
    "docs": "You write user documentation: accurate, short, with examples that run.",
    "refactor": "You refactor without changing behaviour. Existing tests must keep passing.",
    "general": "You are a careful software engineer.",
}

_COMMON = ("You work in a git worktree of your own; other agents work on other tasks in parallel "
           "in their own worktrees. Change only what your task needs, keep to the files it names, "
           "and leave the tree in a state where the tests pass. Do not switch branches, do not use "
           "git stash, and do not push.")


def role_prompt(task_type: str, roles: Mapping[str, str | None]) -> str:
    """The system prompt for a task type: the configured one, else the built-in one."""
    configured = roles.get(task_type)
    return configured or DEFAULT_ROLES.get(task_type, DEFAULT_ROLES["general"])


def build_prompt(task: Task, *, role: str, dependencies: Sequence[Mapping[str, Any]],
                 feedback: str | None) -> str:
    """The full prompt text of one attempt, in Markdown: the role section, then the task's."""
    return f"# Role\n\n{system_prompt(role)}\n\n" + task_prompt(task, dependencies=dependencies, feedback=feedback)


def system_prompt(role: str) -> str:
    """What a model-backed agent gets as its system prompt: the role and the rules every task shares."""
    return f"{role}\n\n{_COMMON}"


def task_prompt(task: Task, *, dependencies: Sequence[Mapping[str, Any]], feedback: str | None) -> str:
    """The prompt without its role section: a model-backed agent's first message (its system prompt
    carries the role, so the model is not sent it twice every turn)."""
    parts = [f"# Task `{task.id}` ({task.type})\n\n{task.description}"]
    if task.files:
        parts.append("# Files this task may change\n\n" + "\n".join(f"- `{f}`" for f in task.files))
    if task.prompt:
        parts.append(f"# Extra instructions\n\n{task.prompt}")
    if dependencies:
        lines = []
        for dep in dependencies:
            files = ", ".join(f"`{f}`" for f in dep.get("files", [])) or "no files"
            lines.append(f"## `{dep['id']}`: {dep['description']}\n\nChanged: {files}\n\n"
                         f"{dep.get('summary') or '(no summary)'}")
        parts.append("# Already done by the tasks this one depends on (merged into your starting point)\n\n"
                     + "\n\n".join(lines))
    if feedback:
        # A fence longer than any run of backticks in the feedback (a diff of Markdown has some).
        fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", feedback)), default=0))
        parts.append("# Your previous attempt was sent back\n\n"
                     "Fix the problem below; your worktree starts from the current integration head.\n\n"
                     f"{fence}\n{feedback.strip()}\n{fence}")
    return "\n\n".join(parts) + "\n"
