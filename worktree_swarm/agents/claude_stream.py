"""The Claude Code CLI's `--output-format stream-json` output, read one line at a time: what the
agent is doing now, a readable transcript, and what the attempt achieved and spent."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worktree_swarm.agents.pricing import cost_usd

_SHORT = 200            # characters of a tool result or an unknown event shown in the transcript


@dataclass(frozen=True)
class Fed:
    """What one stream line adds: transcript lines for the attempt log, and activity lines."""

    log: list[str]
    activity: list[str]


@dataclass
class StreamState:
    """Everything the stream said so far. Feed it lines in order; read the fields at the end."""

    cwd: Path | None = None
    session_id: str | None = None
    model: str | None = None
    result: dict[str, Any] | None = None        # the last `result`
    # Every `result`: a session runs one turn more for each message that reached it after a result,
    # and each reports that turn's usage and turns, with the session's cost so far.
    results: list[dict[str, Any]] = field(default_factory=list)
    bad_line: str | None = None                 # the first stdout line that is not stream-json
    tool_uses: int = 0
    cli_cwd: Path | None = None                 # the directory the CLI says it runs in (symlinks resolved)
    news: dict[str, str] = field(default_factory=dict)     # the uuid of each news line sent -> what it said
    # Usage of each assistant message by id since the last result: the only measure of spending
    # for a turn that ends without one (a timeout or a crash). The CLI repeats a message's usage on
    # each of its content blocks.
    _usage: dict[str, dict[str, Any]] = field(default_factory=dict)

    def feed(self, line: str) -> Fed:
        line = line.strip()
        if not line:
            return Fed([], [])
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            if self.bad_line is None:
                self.bad_line = line
            return Fed([f"[not stream-json] {line}"], [])
        kind = event.get("type")
        if kind == "system":
            return self._system(event)
        if kind == "assistant":
            return self._assistant(event)
        if kind == "user":
            return self._user(event)
        if kind == "result":
            self.result = event
            self.results.append(event)
            self._usage.clear()
            self.session_id = _text(event.get("session_id")) or self.session_id
            return Fed(self._result_lines(event), [])
        if kind == "command_lifecycle":
            return self._lifecycle(event)
        return Fed([f"[{kind}] {_short(json.dumps(event, ensure_ascii=False))}"], [])

    # -- the event kinds -------------------------------------------------------------------------

    def _system(self, event: dict[str, Any]) -> Fed:
        subtype = event.get("subtype")
        if subtype == "init":
            self.session_id = _text(event.get("session_id")) or self.session_id
            self.model = _text(event.get("model")) or self.model
            self.cli_cwd = Path(event["cwd"]) if isinstance(event.get("cwd"), str) else None
            return Fed([f"[init] session {self.session_id} · model {self.model} · "
                        f"permission mode {event.get('permissionMode')} · {event.get('cwd')}"], [])
        if subtype == "api_retry":
            # The CLI retries API errors (a bad key too) with backoff for minutes: show why it waits.
            why = (f"API error {event.get('error_status')} ({event.get('error')}): "
                   f"retry {event.get('attempt')} of {event.get('max_retries')}")
            return Fed([f"[api_retry] {why} in {_int(event.get('retry_delay_ms')) / 1000:.1f} s"], [why])
        detail = event.get("message") or event.get("decision_reason") or json.dumps(event, ensure_ascii=False)
        return Fed([f"[{subtype}] {_short(str(detail))}"], [])

    def _assistant(self, event: dict[str, Any]) -> Fed:
        message = event.get("message") or {}
        if isinstance(message.get("usage"), dict) and message.get("id"):
            self._usage[str(message["id"])] = message["usage"]
        log: list[str] = []
        activity: list[str] = []
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                self.tool_uses += 1
                doing = tool_activity(str(block.get("name")), block.get("input") or {},
                                      cwd=self.cwd, cli_cwd=self.cli_cwd)
                log.append(f"[tool] {doing}")
                activity.append(doing)
            elif block.get("type") == "text" and str(block.get("text", "")).strip():
                log.append("[claude] " + _indent(str(block["text"]).strip()))
        return Fed(log, activity)

    def _user(self, event: dict[str, Any]) -> Fed:
        content = (event.get("message") or {}).get("content")
        log: list[str] = []
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                inner = block.get("content")
                if isinstance(inner, list):
                    inner = " ".join(str(b.get("text", "")) for b in inner if isinstance(b, dict))
                first = next((x for x in str(inner or "").splitlines() if x.strip()), "")
                log.append(f"  {'error: ' if block.get('is_error') else ''}{_short(first)}")
        return Fed(log, [])

    def _lifecycle(self, event: dict[str, Any]) -> Fed:
        """A queued user message's progress: for a news line, when the CLI took it in, and when it
        went to the model (`started`: in the next request of the running turn, or a turn of its own)."""
        label = self.news.get(str(event.get("command_uuid")))
        if label is None:
            return Fed([], [])          # the prompt's own progress says nothing new
        if event.get("state") == "queued":
            return Fed([f"[news] queued: {label}"], [])
        if event.get("state") == "started":
            return Fed([f"[news] told to the model: {label}"], [f"News told to the model: {label}"])
        return Fed([], [])

    def _result_lines(self, event: dict[str, Any]) -> list[str]:
        verdict = "error" if event.get("is_error") else "ok"
        seconds = (event.get("duration_ms") or 0) / 1000
        lines = [f"[done] {verdict} ({event.get('subtype')}) · {self.turns} turns · {self.input_tokens} in / "
                 f"{self.output_tokens} out tokens · ${self.cost_usd:.4f} · {seconds:.1f} s"]
        denied = event.get("permission_denials") or []
        if denied:
            names = ", ".join(sorted({str(d.get("tool_name")) for d in denied if isinstance(d, dict)}))
            lines.append(f"[done] {len(denied)} tool call(s) were refused permission: {names}")
        if self.result_text:
            lines.append("[summary] " + _indent(self.result_text))
        return lines

    # -- what the attempt achieved and spent -----------------------------------------------------

    @property
    def is_error(self) -> bool:
        return self.result is None or bool(self.result.get("is_error"))

    @property
    def result_text(self) -> str:
        return _text(self.result.get("result")).strip() if self.result else ""

    @property
    def turns(self) -> int | None:
        counts = [r.get("num_turns") for r in self.results]
        return sum(n for n in counts if isinstance(n, int)) if any(isinstance(n, int) for n in counts) else None

    def _tokens(self, *, pending_only: bool = False) -> tuple[int, int, int, int]:
        """(input, output, cache write, cache read) tokens: the results' totals, plus the sum of the
        messages seen since the last one (a lower bound: a message's usage is known only as far as
        it streamed)."""
        usages = [] if pending_only else [r.get("usage") or {} for r in self.results]
        usages += list(self._usage.values())
        keys = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        sums = [sum(_int(u.get(k)) for u in usages if isinstance(u, dict)) for k in keys]
        return sums[0], sums[1], sums[2], sums[3]

    @property
    def input_tokens(self) -> int:
        plain, _, write, read = self._tokens()
        return plain + write + read

    @property
    def output_tokens(self) -> int:
        return self._tokens()[1]

    @property
    def cost_usd(self) -> float:
        """The last result's cost (the session's so far), plus an estimate for a turn cut off after it."""
        reported = self.result.get("total_cost_usd") if self.result is not None else 0.0
        spent = float(reported) if isinstance(reported, (int, float)) else 0.0
        if not self._usage or not self.model:
            return spent
        plain, out, write, read = self._tokens(pending_only=True)
        return spent + cost_usd(self.model, input_tokens=plain, output_tokens=out, cache_write_tokens=write,
                                cache_read_tokens=read)

    def verdict(self, returncode: int | None) -> str | None:
        """Why the attempt failed, or None when it succeeded. Both the exit code and `is_error`
        count: an API error can come with `subtype: success`."""
        if self.bad_line is not None:
            return f"claude printed a line that is not stream-json: {_short(self.bad_line)!r}"
        if self.result is None:
            shown = "" if returncode is None else f" (exit {returncode})"
            return f"claude ended without a result{shown}"
        if self.result.get("is_error"):
            errors = self.result.get("errors")
            reason = (self.result_text or (errors and "; ".join(map(str, errors)))
                      or self.result.get("subtype") or "no reason given")
            return f"claude reported an error: {_short(str(reason))}"
        if returncode not in (0, None):
            return f"claude exited with status {returncode}"
        return None


def parse_stream(lines: Iterable[str], *, cwd: Path | None = None) -> StreamState:
    """The state after a whole stream (a recorded one, or a finished run's)."""
    state = StreamState(cwd=cwd)
    for line in lines:
        state.feed(line)
    return state


def tool_activity(name: str, args: dict[str, Any], *, cwd: Path | None = None, cli_cwd: Path | None = None) -> str:
    """One line saying what a tool call does: `Write src/a.py`, `Bash: pytest -q`; paths inside
    the worktree are shown relative to it."""
    if not isinstance(args, dict):
        return name
    roots = [root for root in (cwd, cli_cwd) if root is not None]
    path = args.get("file_path") or args.get("notebook_path") or args.get("path")
    if name == "Bash" and args.get("command"):
        first = str(args["command"]).strip().splitlines() or [""]
        return f"Bash: {_short(first[0])}" + (" …" if len(first) > 1 else "")
    if name in ("Grep", "Glob") and args.get("pattern"):
        where = f" in {_relative(str(path), roots)}" if path else ""
        return f"{name} {_short(str(args['pattern']))}{where}"
    if path:
        return f"{name} {_relative(str(path), roots)}"
    for key in ("description", "url", "query", "prompt"):
        if args.get(key):
            return f"{name}: {_short(str(args[key]))}"
    return name


def _relative(path: str, roots: list[Path]) -> str:
    for root in roots:
        if Path(path).is_relative_to(root):
            return str(Path(path).relative_to(root))
    return path


def _short(value: str) -> str:
    value = " ".join(value.split())
    return value if len(value) <= _SHORT else value[:_SHORT - 1] + "…"


def _indent(text: str) -> str:
    return "\n    ".join(text.splitlines())


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
