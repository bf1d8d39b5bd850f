"""The interface every agent backend implements."""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worktree_swarm.plan import Task
from worktree_swarm.util import proc
from worktree_swarm.util.types import RunId, Sha


class News:
    """Word of work merged into the integration branch while an attempt runs.

    Each item is appended to a JSON-lines file (a command agent reads it at $WSWARM_NEWS) and queued
    for model-backed agents, which pass it on to the model before its next turn."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._queue: list[dict[str, Any]] = []
        self._posted = threading.Event()

    def post(self, item: Mapping[str, Any]) -> None:
        """Queue ITEM and append it to the file as one JSON line (written whole, in one call), unless
        something other than a regular file is at the file's name."""
        with self._lock:
            self._queue.append(dict(item))
            if self.path is not None:
                # The agent can write its attempt's folder: a link, a FIFO or a folder planted at the
                # name is refused, and the file goes unwritten (the agent's loss, not the run's).
                try:
                    fd = proc.open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                except OSError:
                    fd = None
                if fd is not None:
                    with os.fdopen(fd, "ab") as out:
                        out.write((json.dumps(item, ensure_ascii=False) + "\n").encode())
            self._posted.set()

    def take(self) -> list[dict[str, Any]]:
        """Items posted since the last call, oldest first."""
        with self._lock:
            items, self._queue = self._queue, []
            self._posted.clear()
            return items

    def wait(self, timeout: float) -> bool:
        """Wait up to TIMEOUT seconds for an item not yet taken; True when there is one."""
        return self._posted.wait(timeout)

    @staticmethod
    def text(item: Mapping[str, Any]) -> str:
        """One item as a message to a model."""
        if item.get("message"):
            return str(item["message"])
        files = ", ".join(str(f) for f in item.get("files") or []) or "no files"
        return (f"News while you work: task '{item.get('task')}' was merged into the integration branch "
                f"(now at {item.get('head')}). It changed: {files}.\n"
                f"Its summary: {item.get('summary') or '(none)'}\n"
                f"If your change touches the same code, you may bring its work into your branch with "
                f"`git merge {item.get('head')}` and adapt to it.")


@dataclass(frozen=True)
class AgentRequest:
    """One attempt at one task, with every file the agent may read about it."""

    run_id: RunId
    task: Task
    attempt: int
    worktree: Path
    base: Sha
    prompt_path: Path
    task_json_path: Path
    feedback_path: Path | None
    log_path: Path
    timeout: float
    env: dict[str, str] = field(default_factory=dict)   # extra variables (e.g. WSWARM_PORT)
    # What the agent is doing now, one line at a time ("Write src/app.py", "Bash: pytest -q"): each
    # call becomes an `agent-activity` event. Secrets are redacted by the receiver.
    activity: Callable[[str], None] = field(default=lambda line: None, compare=False)
    system_prompt: str = ""             # the role and shared rules (also the head of prompt_path's text)
    task_prompt_path: Path | None = None   # prompt_path's text without the role: for model-backed agents
    model: str | None = None            # the role's model, when it names one
    hold_fds: tuple[int, ...] = ()      # lock fds every process the agent starts inherits (WorktreePool.holds)
    news: News = field(default_factory=News, compare=False)   # merged work it should hear of while it runs

    def first_message(self) -> str:
        """What a model-backed agent sends first: the prompt without the role its system prompt holds."""
        path = self.task_prompt_path or self.prompt_path
        return path.read_text(encoding="utf-8", errors="replace")


@dataclass(frozen=True)
class AgentResult:
    ok: bool
    summary: str = ""
    error: str | None = None
    exit_code: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    turns: int | None = None
    session_id: str | None = None
    model: str | None = None

    def usage(self) -> dict[str, object]:
        """What a model-backed attempt spent, as recorded with the attempt (empty for a command)."""
        fields = {"cost_usd": round(self.cost_usd, 6), "input_tokens": self.input_tokens,
                  "output_tokens": self.output_tokens, "turns": self.turns, "session_id": self.session_id,
                  "model": self.model}
        return {k: v for k, v in fields.items() if v}


class Agent(ABC):
    """Edits files in request.worktree; never touches anything outside it."""

    name: str
    # Its work is kept in the sandbox: the setup step and the gate checks that run code it wrote
    # (a conftest.py, a test script) are kept there too.
    confined: bool = False

    @abstractmethod
    def run(self, request: AgentRequest, *, cancel: threading.Event) -> AgentResult:
        """Carry out one attempt; return when done, failed, timed out or cancelled."""

    def check_available(self) -> None:
        """Raise a UsageError before any worktree is made if this agent cannot run here."""
