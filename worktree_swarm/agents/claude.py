"""The `claude` agent: the Claude Code CLI in headless mode (`claude -p`), run in the task's worktree."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from worktree_swarm.util import proc
from worktree_swarm.agents import claude_permit
from worktree_swarm.agents.base import Agent, AgentRequest, AgentResult, News
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
    """Runs `claude -p` with the task's prompt as the first stream-json line on stdin, then news of
    merged work as further lines while it works, and reads its stream-json output as it arrives:
    tool calls become activity, the `result` the attempt's outcome and cost."""

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
        """The command line; the prompt goes on stdin (no length limit, never read as a flag), as
        stream-json, so further user messages (news) can follow it while the CLI works."""
        # The permission server runs by path (-I: no user site, no PYTHON* variables): stdlib only.
        permit = {"mcpServers": {"wswarm": {"command": sys.executable,
                                            "args": ["-I", str(PERMIT_SCRIPT), str(request.worktree)]}}}
        argv = [executable, "-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose",
                *PERMISSION_FLAGS,
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
        inbox = _Inbox(request, state)
        follower = _Follower(stream_path, request, state, secrets=secret_env_values(env), on_result=inbox.close)
        inbox.start(follower.write)
        try:
            outcome = proc.run_in_group(self.argv(executable, request), cwd=request.worktree, env=env,
                                        output=stream_path, timeout=request.timeout, cancel=cancel,
                                        pidfile=request.log_path.with_suffix(".pid"),
                                        stdin=inbox.read_end, stderr=stderr_path, pass_fds=request.hold_fds)
            inbox.close()
            follower.finish()
            stderr = stderr_path.read_text(encoding="utf-8", errors="replace").strip()
            follower.write(["[stderr] " + line for line in stderr.splitlines()])
        finally:
            inbox.stop()
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


def user_line(content: str, *, uuid_: str | None = None) -> bytes:
    """One stream-json input line carrying CONTENT as the user's message. Built by json.dumps only:
    a line the CLI cannot parse ends the whole session."""
    line: dict[str, Any] = {"type": "user", "message": {"role": "user", "content": content}}
    if uuid_ is not None:
        line["uuid"] = uuid_          # the CLI reports the message's progress (command_lifecycle) by it
    return (json.dumps(line, ensure_ascii=False) + "\n").encode()


class _Inbox:
    """The CLI's stdin, a pipe: the prompt first, then each news item as it is posted, until the
    first `result` (the CLI starts a new turn for every line it reads after one, and exits only at
    EOF), a timeout or a cancel. A line read while a tool runs reaches the model in the same turn."""

    def __init__(self, request: AgentRequest, state: StreamState) -> None:
        self.request = request
        self.state = state
        self.prompt = user_line(request.first_message())
        self.read_end, self._write_end = os.pipe()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"claude-news-{request.task.id}", daemon=True)
        self._log: Callable[[list[str]], None] = lambda lines: None

    def start(self, log: Callable[[list[str]], None]) -> None:
        self._log = log
        self._thread.start()

    def close(self) -> None:
        """Send nothing more; stdin reaches EOF within a moment (the writer thread closes it)."""
        self._closing.set()

    def stop(self) -> None:
        """Close, and let the writer finish (at once: the CLI has exited, so a write fails)."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        try:
            with os.fdopen(self._write_end, "wb") as pipe:
                pipe.write(self.prompt)
                pipe.flush()
                while not self._closing.is_set():
                    if not self.request.news.wait(0.1):
                        continue
                    for item in self.request.news.take():
                        if self._closing.is_set():
                            return
                        label = f"'{item.get('task')}' merged (integration head {str(item.get('head'))[:12]})"
                        key = str(uuid.uuid4())
                        self.state.news[key] = label
                        pipe.write(user_line(News.text(item), uuid_=key))
                        pipe.flush()
                        self._log([f"[news] sent: {label}"])
        except OSError:         # the CLI is gone (EPIPE): nothing more to tell it
            pass


class _Follower:
    """Reads the stream file while the CLI writes it: each complete line updates the state, adds
    to the readable transcript (request.log_path) and reports activity."""

    def __init__(self, stream: Path, request: AgentRequest, state: StreamState, *, secrets: list[str],
                 on_result: Callable[[], None] = lambda: None) -> None:
        self.stream = stream
        self.on_result = on_result
        self.request = request
        self.state = state
        self.secrets = secrets
        self.tail: list[str] = []           # the transcript's last lines, for a failure's summary
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._writing = threading.Lock()        # the news writer adds lines too
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
        with self._writing:
            self._log.close()

    def write(self, lines: list[str]) -> None:
        """Add lines to the transcript, secrets cut out."""
        if not lines:
            return
        text = redact_secrets("\n".join(lines), known=self.secrets)
        with self._writing:
            if self._log.closed:
                return
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
        if self.state.result is not None:
            self.on_result()
        self.write(fed.log)
        for line in fed.activity:
            self.request.activity(line)
