"""The command agent: any command line, told about its task through environment and files."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from worktree_swarm.util import proc
from worktree_swarm.agents.base import Agent, AgentRequest, AgentResult
from worktree_swarm.util.errors import UsageError

# Colour codes and other terminal controls in an agent's output would garble the views' lines.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Shell keywords and builtins are not on PATH but run fine under /bin/sh.
_SHELL_WORDS = frozenset({"exec", "cd", "test", "[", "true", "false", "echo", "printf", "exit", ".",
                          "set", "export", "if", "for", "while", "case", "{", "("})


class CommandAgent(Agent):
    """Runs a user's configured command string through /bin/sh in the task's worktree.

    The string is the user's own (wswarm.toml, --agent-cmd, or a plan they wrote). Task text
    never enters it: it reaches the command through WSWARM_* variables and files.
    """

    def __init__(self, command: str, *, name: str = "command") -> None:
        self.command = command
        self.name = name

    def check_available(self) -> None:
        try:
            words = shlex.split(self.command)
        except ValueError as exc:
            raise UsageError(f"agent command {self.command!r} cannot be parsed: {exc}") from None
        if not words:
            raise UsageError("the agent command is empty", hint="set [agents] command or pass --agent-cmd")
        # The first word that is not a VAR=value assignment is the program.
        program = next((w for w in words if not _ASSIGNMENT.match(w)), "")
        if program and "/" not in program and program not in _SHELL_WORDS and shutil.which(program) is None:
            raise UsageError(f"agent program {program!r} is not installed (not found on PATH)",
                             hint="install it, or point [agents] command / --agent-cmd at one that is")

    def run(self, request: AgentRequest, *, cancel: threading.Event) -> AgentResult:
        env = proc.clean_env(agent_env(request))
        tail = LogActivity(request.log_path, request.activity)
        tail.start()
        try:
            result = proc.run_in_group(proc.shell_argv(self.command), cwd=request.worktree, env=env,
                                       output=request.log_path, timeout=request.timeout, cancel=cancel,
                                       pidfile=request.log_path.with_suffix(".pid"), pass_fds=request.hold_fds)
        finally:
            tail.stop()
        summary = last_lines(request.log_path, 5)
        if result.timed_out:
            return AgentResult(ok=False, timed_out=True, summary=summary,
                               error=f"the agent passed its timeout of {request.timeout:g}s and was killed")
        if result.cancelled:
            return AgentResult(ok=False, cancelled=True, summary=summary, error="interrupted")
        if result.returncode != 0:
            return AgentResult(ok=False, exit_code=result.returncode, summary=summary,
                               error=f"the agent exited with status {result.returncode}")
        return AgentResult(ok=True, exit_code=0, summary=summary)


def agent_env(request: AgentRequest) -> dict[str, str]:
    """The WSWARM_* variables every command agent gets: the task, its attempt, its files."""
    env = {
        "WSWARM_RUN_ID": request.run_id,
        "WSWARM_TASK_ID": request.task.id,
        "WSWARM_TASK_TYPE": request.task.type,
        "WSWARM_TASK_DESCRIPTION": request.task.description,
        "WSWARM_ATTEMPT": str(request.attempt),
        "WSWARM_BASE": request.base,
        "WSWARM_PROMPT": str(request.prompt_path),
        "WSWARM_TASK_JSON": str(request.task_json_path),
        "WSWARM_WORKTREE": str(request.worktree),
    }
    if request.feedback_path is not None:
        env["WSWARM_FEEDBACK"] = str(request.feedback_path)
    env.update(request.env)
    # An agent's own git calls must land in its worktree, never in the user's checkout.
    env["PWD"] = str(request.worktree)
    return env


def last_lines(path: os.PathLike[str], count: int, *, max_bytes: int = 16_384) -> str:
    """The last COUNT non-empty lines of a log, read from its tail only."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.rstrip() for line in data.splitlines() if line.strip()]
    return "\n".join(lines[-count:])


class LogActivity(threading.Thread):
    """Reports the newest line of a running agent's log as its activity: at most one event per
    INTERVAL (the last line wins), read from the file only, so the agent itself never waits."""

    def __init__(self, path: Path, report: Callable[[str], None], *, interval: float = 0.3) -> None:
        super().__init__(name="wswarm-activity", daemon=True)
        self.path = path
        self.report = report
        self.interval = interval
        self._done = threading.Event()
        self._offset = 0
        self._partial = b""
        self._last = ""

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.check()

    def stop(self) -> None:
        """Stop polling, then report the line the agent ended with (if it is new)."""
        self._done.set()
        if self.is_alive():
            self.join()
        self.check()

    def check(self) -> None:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size < self._offset:
                    self._offset, self._partial = 0, b""
                # Only the newest output matters: skip what a burst wrote before its last 16 KiB.
                start = max(self._offset, size - 16_384)
                if start > self._offset:
                    self._partial = b""
                f.seek(start)
                data = self._partial + f.read(size - start)
        except FileNotFoundError:
            return
        self._offset = size
        # Progress bars redraw with a carriage return: each redraw is a line of its own.
        *complete, self._partial = re.split(rb"\r\n|\r|\n", data)
        self._partial = self._partial[-4096:]
        for raw in reversed(complete):
            line = _CONTROL.sub("", raw.decode("utf-8", errors="replace")).strip()
            if line:
                if line != self._last:
                    self._last = line
                    self.report(line)
                return
