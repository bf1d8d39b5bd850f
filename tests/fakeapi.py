"""A scripted Anthropic Messages API on 127.0.0.1, so the real SDK and the real Claude Code CLI run
against it: plain JSON and SSE streaming replies, and a log of what every request carried.

A reply is chosen by the text of the request's last `user` message (the CLI also sends system
entries and side requests of its own): the first unused rule whose `match` occurs in that text
serves it; a request no rule matches gets `fallback` (a short end_turn text by default).
"""

from __future__ import annotations

import itertools
import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Block = dict[str, Any]
_ids = itertools.count(1)


def text(value: str) -> Block:
    return {"type": "text", "text": value}


def tool_use(name: str, input: dict[str, Any], *, id: str | None = None) -> Block:
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):04d}", "name": name, "input": input}


@dataclass
class Reply:
    blocks: list[Block] = field(default_factory=list)
    stop_reason: str | None = None            # default: tool_use when a block is one, else end_turn
    input_tokens: int = 100
    output_tokens: int = 50
    status: int = 200                          # non-200: an API error of `error_type`
    error_type: str = "api_error"
    error_message: str = "scripted failure"
    cut: str | None = None                     # streamed only, after the first event: "drop", "stall"
                                               # (silent for 4 s, then drop); or "empty" (no event)
    delay: float = 0.0                         # seconds of silence before answering (a slow or hung API)

    def message(self, model: str) -> dict[str, Any]:
        stop = self.stop_reason or ("tool_use" if any(b["type"] == "tool_use" for b in self.blocks) else "end_turn")
        return {"id": f"msg_{next(_ids):06d}", "type": "message", "role": "assistant", "model": model,
                "content": self.blocks, "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


@dataclass
class Rule:
    reply: Reply
    match: str | None
    times: int                                 # how many requests it may serve; 0 = unlimited
    served: int = 0


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]                    # names in lower case
    body: dict[str, Any]
    rule: int | None                           # index of the rule that answered, None = fallback

    def last_user_text(self) -> str:
        return last_user_text(self.body)

    def since_last_reply(self) -> str:
        return since_last_reply(self.body)


def since_last_reply(body: dict[str, Any]) -> str:
    """Everything the request adds after the model's last reply, as JSON text: tool results, and
    what the Claude Code CLI adds beside them (a message the user sent mid-turn goes into the
    tool result's text for some models, into a separate `system`-role message for others)."""
    messages = body.get("messages") or []
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    return json.dumps(messages[last + 1:], ensure_ascii=False)


def last_user_text(body: dict[str, Any]) -> str:
    """All text of the last user message: its text blocks and the text of its tool results."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        parts: list[str] = []
        for block in content or []:
            if block.get("type") == "text":
                parts.append(block.get("text", ""))
            elif block.get("type") == "tool_result":
                inner = block.get("content")
                if isinstance(inner, str):
                    parts.append(inner)
                else:
                    parts.extend(b.get("text", "") for b in inner or [] if b.get("type") == "text")
        return "\n".join(parts)
    return ""


class FakeAnthropic:
    """Start with `with FakeAnthropic() as api:`; point clients at `api.url`."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.requests: list[Request] = []
        self.fallback = Reply([text("Nothing more to do.")])
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for one, and every test using the fixture pays it.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def on(self, match: str | None, *blocks: Block, times: int = 1, **reply: Any) -> None:
        """Answer a request whose last user text contains MATCH (None: any) with BLOCKS."""
        self.rules.append(Rule(Reply(list(blocks), **reply), match, times))

    def messages(self) -> list[Request]:
        """The Messages API calls received, side requests included, in order."""
        with self._lock:
            return [r for r in self.requests if r.path.split("?")[0].endswith("/v1/messages")]

    def _choose(self, body: dict[str, Any]) -> tuple[Reply, int | None]:
        said = last_user_text(body)
        with self._lock:
            for i, rule in enumerate(self.rules):
                if (rule.times == 0 or rule.served < rule.times) and (rule.match is None or rule.match in said):
                    rule.served += 1
                    return rule.reply, i
        return self.fallback, None


def _handler(api: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._json(200, {"data": [], "has_more": False})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                body = {}
            path = self.path.split("?")[0]
            if path.endswith("/count_tokens"):
                self._record(body, None)
                self._json(200, {"input_tokens": 100})
                return
            if not path.endswith("/v1/messages"):
                self._record(body, None)
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": path}})
                return
            reply, rule = api._choose(body)
            self._record(body, rule)
            if reply.delay:
                time.sleep(reply.delay)
                if self._client_gone():
                    return
            if reply.status != 200:
                self._json(reply.status, {"type": "error",
                                          "error": {"type": reply.error_type, "message": reply.error_message}})
                return
            message = reply.message(str(body.get("model") or "claude-test"))
            if body.get("stream"):
                self._stream(message, reply)
            else:
                self._json(200, message)

        def _client_gone(self) -> bool:
            """Whether the client hung up while we kept silent (it timed out or was cancelled)."""
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)

        def _record(self, body: dict[str, Any], rule: int | None) -> None:
            with api._lock:
                api.requests.append(Request(self.command, self.path,
                                            {k.lower(): v for k, v in self.headers.items()}, body, rule))

        def _json(self, status: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("request-id", f"req_{next(_ids):06d}")
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, message: dict[str, Any], reply: Reply) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            events = sse_events(message)
            if reply.cut is not None:
                events = events[:1] if reply.cut == "drop" else []
            for event, data in events:
                self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
            if reply.cut == "stall":
                time.sleep(4)

    return Handler


def sse_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The Messages API's streaming events for one complete message."""
    usage = message["usage"]
    start = dict(message, content=[], stop_reason=None,
                 usage=dict(usage, output_tokens=1))
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start}),
                                                ("ping", {"type": "ping"})]
    for i, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            head = dict(block, input={})
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            head = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        events += [("content_block_start", {"type": "content_block_start", "index": i, "content_block": head}),
                   ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}),
                   ("content_block_stop", {"type": "content_block_stop", "index": i})]
    events += [("message_delta", {"type": "message_delta",
                                  "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                  "usage": {"output_tokens": usage["output_tokens"]}}),
               ("message_stop", {"type": "message_stop"})]
    return events
