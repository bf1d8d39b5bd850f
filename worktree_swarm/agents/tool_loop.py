"""The `anthropic` agent: a streaming Messages API tool-use loop whose tools stay in the worktree."""

from __future__ import annotations

import itertools
import os
import textwrap
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

import anthropic
import httpx2

from worktree_swarm.util import proc
from worktree_swarm.agents.base import Agent, AgentRequest, AgentResult, News
from worktree_swarm.agents.pricing import cost_usd
from worktree_swarm.agents.sandbox import Runner, describe
from worktree_swarm.sandbox import available as sandbox_available
from worktree_swarm.agents.tool_specs import TOOL_SPECS, call_tool
from worktree_swarm.agents.tools import Workspace
from worktree_swarm.config import DEFAULT_AGENT_MODEL, AgentConfig
from worktree_swarm.util.errors import UsageError
from worktree_swarm.util.redact import redact_secrets, secret_env_values

DEFAULT_MAX_TURNS = 50
DEFAULT_MAX_TOKENS = 8192          # per reply; streaming, so larger values are allowed too
REQUEST_TIMEOUT = 600.0            # seconds one streamed reply may take
_SHOWN = 2000                      # characters of a tool result copied into the transcript


class _Stop(Exception):
    """Ends the loop with a failed result."""

    def __init__(self, error: str, *, timed_out: bool = False, cancelled: bool = False) -> None:
        super().__init__(error)
        self.error, self.timed_out, self.cancelled = error, timed_out, cancelled


class _CutOff(Exception):
    """A streamed reply that broke off after its headers: the SDK wraps failures of the request,
    not of the body's reads, so a stall or a dropped connection mid-reply arrives as the HTTP
    library's own error, or as a stream that just ends without its `message_stop`."""


class AnthropicAgent(Agent):
    """Claude through the Messages API, with list/read/write/edit/search/run tools.

    BASE_URL and HTTP_CLIENT (an httpx client as the SDK takes it) are for tests and proxies; by
    default the SDK reads
    ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN) itself.
    """

    def __init__(self, spec: AgentConfig, *, base_url: str | None = None,
                 http_client: Any = None, max_retries: int = 3,
                 sandbox: bool | None = None, network: bool = False, required: bool = True) -> None:
        self.spec = spec
        self.name = spec.name
        self.base_url = base_url
        self.http_client = http_client
        self.max_retries = max_retries
        self.sandbox = sandbox
        self.network = network
        self.required = required

    confined = True

    def check_available(self) -> None:
        if self.sandbox is None and self.required and not sandbox_available():
            raise UsageError(f"agent {self.name!r} runs the model's commands, and the checks of its work, only in a "
                             "bubblewrap sandbox, and bubblewrap is not available here",
                             hint="install bubblewrap (e.g. apt-get install bubblewrap), or set [sandbox] "
                                  "required = false in wswarm.toml to run them unconfined")
        if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
            raise UsageError(f"agent {self.name!r} calls the Messages API and needs ANTHROPIC_API_KEY "
                             "in the environment",
                             hint="export ANTHROPIC_API_KEY, or work without a model: write a plan "
                                  "(wswarm start --plan plan.json) and run it with a command agent "
                                  "(--agent-cmd 'COMMAND')")

    def run(self, request: AgentRequest, *, cancel: threading.Event) -> AgentResult:
        secrets = secret_env_values(os.environ)
        secrets += [v for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN") if (v := os.environ.get(k))]
        scratch = request.log_path.parent / "scratch"
        deadline = time.monotonic() + request.timeout
        session = _Session(
            agent=self, request=request, cancel=cancel, deadline=deadline, secrets=secrets,
            model=request.model or self.spec.model or DEFAULT_AGENT_MODEL,
            workspace=(ws := Workspace(request.worktree)),
            runner=Runner(ws, scratch, env=request.env, cancel=cancel, deadline=deadline,
                          sandbox=self.sandbox, secrets=secrets, network=self.network, required=self.required))
        try:
            with open(request.log_path, "a", encoding="utf-8", errors="replace") as log:
                session.log = log
                return session.run()
        finally:
            # HOME and temp files of the run commands: caches, not results.
            proc.remove_tree(scratch)


@dataclass
class _Session:
    """One attempt's conversation: its messages, spending and transcript."""

    agent: AnthropicAgent
    request: AgentRequest
    cancel: threading.Event
    deadline: float
    secrets: list[str]
    model: str
    workspace: Workspace
    runner: Runner
    log: IO[str] | None = None
    messages: list[Any] = field(default_factory=list)
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write: int = 0
    cache_read: int = 0
    summary: str = ""
    news: list[dict[str, Any]] = field(default_factory=list)    # posted, not yet told to the model

    def run(self) -> AgentResult:
        spec = self.agent.spec
        max_turns = spec.max_turns or DEFAULT_MAX_TURNS
        client = anthropic.Anthropic(base_url=self.agent.base_url, http_client=self.agent.http_client,
                                     max_retries=0)
        prompt = self.request.first_message()
        self.messages.append({"role": "user", "content": prompt})
        self._write(f"# anthropic agent {self.agent.name}: model {self.model}, at most {max_turns} turns, "
                    f"{self.request.timeout:g}s; run commands "
                    f"{'in a bubblewrap sandbox' if self.runner.sandboxed else 'unsandboxed'}\n")
        try:
            while True:
                if self.turns >= max_turns:
                    raise _Stop(f"the agent used its {max_turns} turns without finishing "
                                f"(raise max_turns in [agents.{self.agent.name}])")
                self._check_time()
                self._tell_news()
                self.turns += 1
                reply = self._ask(client)
                if self._answer(reply):
                    break
        except _Stop as stop:
            self._write(f"\n## stopped: {stop.error}\n")
            return self._result(ok=False, error=stop.error, timed_out=stop.timed_out, cancelled=stop.cancelled)
        finally:
            if self.agent.http_client is None:      # an injected client is its owner's to close
                client.close()
        self._write(f"\n## summary\n\n{self.summary or '(no summary)'}\n")
        return self._result(ok=True)

    def _tell_news(self) -> None:
        """Add news of work merged meanwhile to the user message the next turn sends: after its
        tool results (or its text), so user and assistant messages still alternate."""
        self.news += self.request.news.take()
        last = self.messages[-1]
        if not self.news or last["role"] != "user":     # a paused turn continues its assistant message
            return
        content = last["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
        for item in self.news:
            told = News.text(item)
            blocks.append({"type": "text", "text": told})
            self._write(f"\n## news\n\n{told}\n")
            self.request.activity(f"News: '{item.get('task')}' merged (integration head {str(item.get('head'))[:12]})")
        last["content"] = blocks
        self.news = []

    def _ask(self, client: anthropic.Anthropic) -> Any:
        """One reply. Retries (overloaded, rate limited, connection lost) are ours, not the SDK's,
        so they wait within the attempt's time and stop at once on a cancel."""
        for retry in itertools.count():
            try:
                reply = self._stream(client)
            except (anthropic.APIStatusError, anthropic.APIConnectionError, _CutOff) as exc:
                if isinstance(exc, (anthropic.APITimeoutError, _CutOff)):
                    self._check_time()
                error = self._redact(str(exc) if isinstance(exc, _CutOff) else _api_error(exc, client))
                pause = _backoff(exc, retry)
                if retry >= self.agent.max_retries or not _retryable(exc) or \
                        time.monotonic() + pause >= self.deadline:
                    raise _Stop(error) from None
                self._write(f"  ({error}; retrying in {pause:.1f}s)\n")
                if self.cancel.wait(pause):
                    raise _Stop("interrupted", cancelled=True) from None
                continue
            except anthropic.APIError as exc:
                raise _Stop(self._redact(f"the Messages API sent a reply the SDK cannot read: {exc}")) from None
            usage = reply.usage
            self.input_tokens += usage.input_tokens
            self.output_tokens += usage.output_tokens
            self.cache_write += usage.cache_creation_input_tokens or 0
            self.cache_read += usage.cache_read_input_tokens or 0
            return reply
        raise AssertionError("unreachable")

    def _stream(self, client: anthropic.Anthropic) -> Any:
        """One streamed reply. Cancel and the deadline are checked between its events (the SDK
        swallows pings, so only content counts); a silent server is cut off by the read timeout."""
        system = self.request.system_prompt.strip()
        tools: list[Any] = [dict(t) for t in TOOL_SPECS]
        if not system:
            tools[-1] = dict(tools[-1], cache_control={"type": "ephemeral"})
        timeout = min(REQUEST_TIMEOUT, max(self.deadline - time.monotonic(), 0.5))
        with client.messages.stream(
            model=self.model, max_tokens=self.agent.spec.max_tokens or DEFAULT_MAX_TOKENS,
            system=[{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}] if system
            else anthropic.omit,
            tools=tools, messages=_cache_last(self.messages), timeout=timeout,
        ) as stream:
            try:
                started = False
                for _event in stream:
                    started = True
                    if self.cancel.is_set():
                        raise _Stop("interrupted", cancelled=True)
                    self._check_time()
                if not started:         # the SDK would fail an assertion on a reply with no events
                    raise _CutOff("the Messages API reply ended before it began")
                reply = stream.get_final_message()
            except httpx2.TransportError as exc:
                raise _CutOff(f"the Messages API reply broke off: {exc or type(exc).__name__}") from None
        if reply.stop_reason is None:
            raise _CutOff("the Messages API reply broke off before its end")
        return reply

    def _answer(self, reply: Any) -> bool:
        """Record REPLY, run its tool calls and queue their results; True when the model is done."""
        content = [_param(block) for block in reply.content]
        self.messages.append({"role": "assistant", "content": content})
        self._write(f"\n## turn {self.turns} ({reply.stop_reason})\n")
        calls = [b for b in reply.content if b.type == "tool_use"]
        said = "\n".join(b.text for b in reply.content if b.type == "text").strip()
        if said:
            self.summary = said
            if calls or reply.stop_reason != "end_turn":     # the last words are written once, as the summary
                self._write(said + "\n")
        if reply.stop_reason == "refusal":
            raise _Stop("the model declined to continue (stop_reason: refusal)")
        if reply.stop_reason == "model_context_window_exceeded":
            raise _Stop("the conversation outgrew the model's context window; the task may need splitting")
        if reply.stop_reason == "pause_turn":
            return False
        if reply.stop_reason == "max_tokens":
            # A cut reply's last tool call may be incomplete: none is run, the model says it again.
            cut = "your reply was cut off at max_tokens and this call was not run: send it again, in smaller steps"
            results: list[Any] = [{"type": "tool_result", "tool_use_id": c.id, "content": cut, "is_error": True}
                                  for c in calls]
            self.messages.append({"role": "user", "content": results or
                                  [{"type": "text", "text": "Your reply was cut off at max_tokens: continue."}]})
            return False
        if not calls:
            return True
        results = []
        for call in calls:
            if self.cancel.is_set():
                raise _Stop("interrupted", cancelled=True)
            text, is_error = self._call(call.name, call.input)
            results.append({"type": "tool_result", "tool_use_id": call.id, "content": text, "is_error": is_error})
        self.messages.append({"role": "user", "content": results})
        return False

    def _call(self, name: str, args: Any) -> tuple[str, bool]:
        line = _activity(name, args)
        self.request.activity(line)
        self._write(f"> {line}\n")
        text, is_error = call_tool(name, args, workspace=self.workspace, runner=self.runner)
        if self.cancel.is_set() and name == "run":
            raise _Stop("interrupted", cancelled=True)
        shown = text if len(text) <= _SHOWN else text[:_SHOWN] + f"\n[... {len(text) - _SHOWN} characters]"
        self._write(textwrap.indent(shown.rstrip("\n") or "(no output)", "  ! " if is_error else "  ",
                                    lambda line: True) + "\n")
        return text, is_error

    def _check_time(self) -> None:
        if time.monotonic() >= self.deadline:
            raise _Stop(f"the agent passed its timeout of {self.request.timeout:g}s", timed_out=True)

    def _redact(self, text: str) -> str:
        return redact_secrets(text, known=self.secrets)

    def _write(self, text: str) -> None:
        if self.log is not None:
            self.log.write(self._redact(text))
            self.log.flush()

    def _result(self, *, ok: bool, error: str | None = None, timed_out: bool = False,
                cancelled: bool = False) -> AgentResult:
        cost = cost_usd(self.model, input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                        cache_write_tokens=self.cache_write, cache_read_tokens=self.cache_read)
        return AgentResult(ok=ok, summary=self._redact(self.summary), error=error, timed_out=timed_out,
                           cancelled=cancelled, cost_usd=cost,
                           input_tokens=self.input_tokens + self.cache_write + self.cache_read,
                           output_tokens=self.output_tokens, turns=self.turns, model=self.model)


def _param(block: Any) -> dict[str, Any]:
    """A reply's content block as a request parameter (the SDK's models carry extra null fields)."""
    if block.type == "text":
        return {"type": "text", "text": block.text}
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    dumped: dict[str, Any] = block.model_dump(exclude_none=True)
    return dumped


def _cache_last(messages: list[Any]) -> list[Any]:
    """MESSAGES with a cache breakpoint on the newest block, so each turn re-reads the last one's
    prefix from the cache instead of paying for the whole conversation again."""
    last = messages[-1]
    content = last["content"]
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    blocks[-1] = dict(blocks[-1], cache_control={"type": "ephemeral"})
    return [*messages[:-1], {"role": last["role"], "content": blocks}]


def _activity(name: str, args: Any) -> str:
    args = args if isinstance(args, dict) else {}
    if name == "run":
        return f"Run: {describe(args.get('argv'))}"
    if name == "search":
        return f"Search {str(args.get('pattern'))[:120]!r}" + (f" in {args['path']}" if args.get("path") else "")
    label = {"list": "List", "read": "Read", "write": "Write", "edit": "Edit"}.get(name, name)
    return f"{label} {str(args.get('path') or '.')[:200]}"


def _api_error(exc: anthropic.APIStatusError | anthropic.APIConnectionError, client: anthropic.Anthropic) -> str:
    """One line naming what went wrong, in the API's own words where it gave some."""
    if isinstance(exc, anthropic.APITimeoutError):
        return "the Messages API did not answer in time"
    if isinstance(exc, anthropic.APIConnectionError):
        return f"cannot reach the Messages API at {client.base_url}: {exc}"
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    kind = error.get("type") or "error"
    message = error.get("message") or exc.message
    return f"the Messages API answered {exc.status_code} {kind}: {message}"


def _retryable(exc: anthropic.APIStatusError | anthropic.APIConnectionError | _CutOff) -> bool:
    """The failures the SDK itself would retry: connection trouble, 408, 409, 429 and 5xx."""
    if isinstance(exc, (anthropic.APIConnectionError, _CutOff)):
        return True
    return exc.status_code in (408, 409, 429) or exc.status_code >= 500


def _backoff(exc: anthropic.APIStatusError | anthropic.APIConnectionError | _CutOff, retry: int) -> float:
    """Seconds to wait: the server's retry-after when it gives one (capped), else 0.5 s doubling."""
    if isinstance(exc, anthropic.APIStatusError):
        try:
            return min(float(exc.response.headers.get("retry-after", "")), 60.0)
        except ValueError:
            pass
    return min(0.5 * 2 ** retry, 8.0)

