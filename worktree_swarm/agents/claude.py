"""The `claude` agent: the Claude Code CLI in headless mode (`claude -p`), run in the task's worktree."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import IO

from worktree_swarm.util import proc
from worktree_swarm.agents import claude_permit
from worktree_swarm.agents.base import Agent, AgentRequest, AgentResult
from worktree_swarm.agents.claude_stream import StreamState
from worktree_swarm.agents.command import agent_env
from worktree_swarm.config import AgentConfig
from worktree_swarm.util.errors import UsageError
from worktree_swarm.util.redact import redact_secrets, secret_env_values

# Nothing but the model API: no telemetry, error reports, update checks or other side traffic.
QUIET_ENV = {"DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1",
             "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
# acceptEdits lets the file tools write inside the working directory; commands need Bash allowed.
# What the CLI would still ask about (all of a worktree under .git/, paths outside it) goes to
# claude_permit.py, which allows the worktree and refuses the rest. bypassPermissions is refused
# as root, and would lift the working-directory limit. The commands denied are ones the prompt
# forbids that touch state shared with the user's checkout (stash is shared by all worktrees) or a remote.
PERMISSION_FLAGS = ("--permission-mode", "acceptEdits", "--allowedTools", "Bash",
                    "--disallowedTools", "Bash(git push:*)", "Bash(git stash:*)", "Bash(git switch:*)",
                    "--permission-prompt-tool", "mcp__wswarm__approve")
PERMIT_SCRIPT = Path(claude_permit.__file__)
SUMMARY_CHARS = 4000            # a summary travels into the prompts of dependent tasks
INSTALL_HINT = ("install it with `npm install -g @anthropic-ai/claude-code`, or point "
                "[agents.{name}] binary in wswarm.toml at it")


class ClaudeCodeAgent(Agent):
    """Runs `claude -p` with the task's prompt on stdin and reads its stream-json output as it
    arrives: tool calls become activity, the final `result` the attempt's outcome and cost."""

    def __init__(self, spec: AgentConfig) -> None:
        self.spec = spec
        self.name = spec.name

    def executable(self) -> str | None:
        """The CLI's path: `binary` as configured (a name looked up on PATH, or a path), else claude."""
        found = shutil.which(os.path.expanduser(self.spec.binary or "claude"))
        return os.path.abspath(found) if found else None

    def check_available(self) -> None:
        if self.executable() is None:
            configured = self.spec.binary or "claude"
            where = "not found on PATH" if "/" not in configured else "not an executable file"
            raise UsageError(f"the Claude Code CLI {configured!r} for agent {self.name!r} is {where}",
                             hint=INSTALL_HINT.format(name=self.name))

    def argv(self, executable: str, request: AgentRequest) -> list[str]:
        """The command line; the prompt goes on stdin (no length limit, never read as a flag)."""
        # The permission server runs by path (-I: no user site, no PYTHON* variables): stdlib only.
        permit = {"mcpServers": {"wswarm": {"command": sys.executable,
                                            "args": ["-I", str(PERMIT_SCRIPT), str(request.worktree)]}}}
        argv = [executable, "-p", "--output-format", "stream-json", "--verbose", *PERMISSION_FLAGS,
                "--mcp-config", json.dumps(permit)]
        if request.system_prompt:
            argv += ["--append-system-prompt", request.system_prompt]
        # Without a configured model the CLI picks its own current default (or the user's setting).
        model = request.model or self.spec.model
        if model:
            argv += ["--model", model]
        if self.spec.max_turns:
            argv += ["--max-turns", str(self.spec.max_turns)]
        return argv + list(self.spec.args)

    def run(self, request: AgentRequest, *, cancel: threading.Event) -> AgentResult:
        executable = self.executable()
        if executable is None:
            return AgentResult(ok=False, error=f"the Claude Code CLI {self.spec.binary or 'claude'!r} is not installed "
                                               "any more")
        # The user's own environment (HOME holds the CLI's login), the WSWARM_* contract, and quiet.
        env = proc.clean_env({**agent_env(request), **QUIET_ENV})
        stream_path = request.log_path.with_name(request.log_path.stem + ".stream.jsonl")
        stderr_path = request.log_path.with_name(request.log_path.stem + ".stderr")
        stream_path.write_bytes(b"")
        stderr_path.write_bytes(b"")
        state = StreamState(cwd=request.worktree)
        follower = _Follower(stream_path, request, state, secrets=secret_env_values(env))
        try:
            outcome = proc.run_in_group(self.argv(executable, request), cwd=request.worktree, env=env,
                                        output=stream_path, timeout=request.timeout, cancel=cancel,
                                        pidfile=request.log_path.with_suffix(".pid"),
                                        stdin=request.task_prompt_path or request.prompt_path, stderr=stderr_path,
                                        pass_fds=request.hold_fds)
            follower.finish()
            stderr = stderr_path.read_text(encoding="utf-8", errors="replace").strip()
            follower.write(["[stderr] " + line for line in stderr.splitlines()])
        finally:
            follower.close()
        return self._result(state, outcome, request, stderr=stderr, transcript=follower.tail)

    def _result(self, state: StreamState, outcome: proc.GroupResult, request: AgentRequest, *,
                stderr: str, transcript: list[str]) -> AgentResult:
        # What was spent is recorded whatever the outcome: a failed attempt costs money too.
        spent = AgentResult(ok=False, exit_code=outcome.returncode, summary=_cap("\n".join(transcript[-20:])),
                            cost_usd=state.cost_usd, input_tokens=state.input_tokens,
                            output_tokens=state.output_tokens, turns=state.turns, session_id=state.session_id,
                            model=state.model)
        if outcome.timed_out:
            return replace(spent, timed_out=True,
                           error=f"the agent passed its timeout of {request.timeout:g}s and was killed")
        if outcome.cancelled:
            return replace(spent, cancelled=True, error="interrupted")
        error = state.verdict(outcome.returncode)
        if error is not None:
            if state.result is None and stderr:
                error += ": " + stderr.splitlines()[-1][:300]
            return replace(spent, error=error)
        return replace(spent, ok=True, summary=_cap(state.result_text) or spent.summary)


def _cap(summary: str) -> str:
    if len(summary) <= SUMMARY_CHARS:
        return summary
    return summary[:SUMMARY_CHARS] + "\n[… cut; the whole text is in the attempt's log]"


class _Follower:
    """Reads the stream file while the CLI writes it: each complete line updates the state, adds
    to the readable transcript (request.log_path) and reports activity."""

    def __init__(self, stream: Path, request: AgentRequest, state: StreamState, *, secrets: list[str]) -> None:
        self.stream = stream
        self.request = request
        self.state = state
        self.secrets = secrets
        self.tail: list[str] = []           # the transcript's last lines, for a failure's summary
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"claude-stream-{request.task.id}", daemon=True)
        self._log: IO[str] = open(request.log_path, "a", encoding="utf-8", errors="replace")
        self._thread.start()

    def finish(self) -> None:
        """Read what is left once the CLI has exited; re-raise what went wrong in the reader."""
        self._done.set()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self._log.close()

    def write(self, lines: list[str]) -> None:
        """Add lines to the transcript, secrets cut out."""
        if not lines:
            return
        text = redact_secrets("\n".join(lines), known=self.secrets)
        self._log.write(text + "\n")
        self._log.flush()
        self.tail = (self.tail + text.splitlines())[-40:]

    def _run(self) -> None:
        try:
            with open(self.stream, "rb") as f:
                pending = b""
                while True:
                    finished = self._done.is_set()      # read once more after the CLI is gone
                    chunk = f.read()
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for raw in complete:
                        self._line(raw)
                    if finished and not chunk:
                        if pending.strip():
                            self._line(pending)
                        return
                    if not chunk:
                        self._done.wait(0.05)
        except BaseException as exc:      # handed to the caller's thread by finish()
            self._error = exc

    def _line(self, raw: bytes) -> None:
        fed = self.state.feed(raw.decode("utf-8", errors="replace"))
        self.write(fed.log)
        for line in fed.activity:
            self.request.activity(line)
