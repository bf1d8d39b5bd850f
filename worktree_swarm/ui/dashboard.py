"""`wswarm dashboard`: the web command center, a stdlib HTTP server on 127.0.0.1.

JSON endpoints for runs, tasks (attempts, gate reports, diffs, logs) and the DAG; a server-sent
event stream that tails the run's events.jsonl and sends, beside each event, the view model folded
by ui.feed — the page draws that and keeps no truth of its own. Assets ship in ui/static/.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
import urllib.parse
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from worktree_swarm.errors import RunNotFoundError, UsageError, WswarmError, crash_log
from worktree_swarm.git.repo import Repo
from worktree_swarm.state import RunStore, find_run
from worktree_swarm.status import status_data
from worktree_swarm.ui import api
from worktree_swarm.ui.feed import EventTail, Feed

HOST = "127.0.0.1"
DEFAULT_PORT = 8767
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
# Everything the page loads comes from this server: no CDN, no fonts from elsewhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class Dashboard:
    """The server for one repository; RUN is the run the page opens first."""

    def __init__(self, repo: Repo, *, run: str, port: int = DEFAULT_PORT, poll: float = 0.25,
                 heartbeat: float = 15.0) -> None:
        self.repo = repo
        self.run = run
        self.poll = poll
        self.heartbeat = heartbeat
        self.stopping = threading.Event()
        try:
            self.httpd = ThreadingHTTPServer((HOST, port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {HOST} is already in use",
                                 hint="pick another with --port P, or --port 0 for any free port") from None
            raise UsageError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}",
                             hint="pick another port with --port P") from None
        self.httpd.dashboard = self  # type: ignore[attr-defined]
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://{HOST}:{self.port}/"

    def serve(self) -> None:
        """Serve until Ctrl-C or stop(); Ctrl-C is the normal way out, not an error."""
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self.stopping.set()
            self.httpd.server_close()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()

    def store(self, run: str) -> RunStore:
        return RunStore.open(find_run(self.repo.state_dir, run))


def open_dashboard(*, cwd: Path, run: str | None, port: int) -> Dashboard:
    """Find the repository and the run, and bind the port; nothing is served yet."""
    repo = Repo.discover(cwd)
    run_dir = find_run(repo.state_dir, run)
    return Dashboard(repo, run=run_dir.name, port=port)


def open_browser(url: str) -> bool:
    """Open URL in the desktop's browser. Without a display, Python's webbrowser would start a
    text browser in this very terminal: then only the printed URL is offered."""
    if sys.platform != "darwin" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    return webbrowser.open(url)


class _Handler(BaseHTTPRequestHandler):
    server_version = "wswarm-dashboard"

    @property
    def dash(self) -> Dashboard:
        return self.server.dashboard  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass   # a request log on the terminal would bury the URL and the errors

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        # Another site's page resolving a name to 127.0.0.1 (DNS rebinding) must not read runs.
        host = (self.headers.get("Host") or "").lower()
        if host not in (f"{HOST}:{self.dash.port}", f"localhost:{self.dash.port}"):
            self._send(HTTPStatus.FORBIDDEN, b"wrong Host header\n", "text/plain; charset=utf-8")
            return
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        query = urllib.parse.parse_qs(url.query)
        try:
            self._route(parts, query)
        except RunNotFoundError as exc:
            self._json({"error": exc.message}, HTTPStatus.NOT_FOUND)
        except WswarmError as exc:
            self._json({"error": exc.message}, HTTPStatus.BAD_REQUEST)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the page went away mid-answer
        except Exception as exc:  # a bug: the page gets one line, the traceback goes to a file
            log = crash_log()
            self._json({"error": f"internal error: {type(exc).__name__}: {exc}", "traceback": str(log)},
                       HTTPStatus.INTERNAL_SERVER_ERROR)

    def _route(self, parts: list[str], query: dict[str, list[str]]) -> None:
        if not parts or parts == ["index.html"]:
            return self._static("index.html")
        if len(parts) == 2 and parts[0] == "static":
            return self._static(parts[1])
        if parts[:2] != ["api", "runs"]:
            return self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        if len(parts) == 2:
            return self._json({"default": self.dash.run, "runs": api.runs_index(self.dash.repo.state_dir)})
        run, rest = parts[2], parts[3:]
        if rest == ["events"]:
            return self._events(run, query)
        store = self.dash.store(run)
        try:
            if rest == ["status"]:
                return self._json(status_data(store))
            if rest == ["view"]:
                feed = Feed.for_store(store)
                feed.apply_all(EventTail(store.dir / "events.jsonl").read())
                return self._json(feed.view(live=store.is_live()))
            if rest == ["dag"]:
                return self._json(api.dag(store))
            if rest == ["tasks"]:
                return self._json(api.tasks_data(store))
            if len(rest) == 2 and rest[0] == "tasks":
                return self._json(api.tasks_data(store, rest[1])[0])
            # isdecimal, not isdigit: int() refuses "²", which isdigit takes.
            if len(rest) >= 5 and rest[0] == "tasks" and rest[2] == "attempts" and rest[3].isdecimal():
                task, n = rest[1], int(rest[3])
                if rest[4:] == ["diff"]:
                    return self._text(api.attempt_diff(self.dash.repo, store, task, n), "text/x-diff")
                if len(rest) == 6 and rest[4] == "logs":
                    return self._text(api.attempt_log(store, task, n, rest[5]))
            return self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        finally:
            store.close()

    # -- answers -------------------------------------------------------------------------------

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=60" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: object, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _text(self, text: str, kind: str = "text/plain") -> None:
        self._send(HTTPStatus.OK, text.encode("utf-8", errors="surrogateescape"), f"{kind}; charset=utf-8")

    def _static(self, name: str) -> None:
        if name not in STATIC:
            return self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        body = resources.files("worktree_swarm.ui").joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, body, STATIC[name])

    def _events(self, run: str, query: dict[str, list[str]]) -> None:
        """Server-sent events: `event` (one per log line, id = its line number) from after
        Last-Event-ID or ?since=, `view` (the folded view model) whenever it changed, `: ping`
        heartbeats, and `end` once a finished run has been sent in full. `?events=0` sends only the
        views: the page needs nothing else, and a long run's log is megabytes of activity lines."""
        since_text = self.headers.get("Last-Event-ID") or (query.get("since") or ["-1"])[0]
        try:
            since = int(since_text)
        except ValueError:
            raise UsageError(f"since / Last-Event-ID must be an event number, not {since_text!r}") from None
        store = self.dash.store(run)
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self._stream(store, since, raw=(query.get("events") or ["1"])[0] != "0")
        finally:
            store.close()

    def _stream(self, store: RunStore, since: int, *, raw: bool) -> None:
        dash = self.dash
        tail, feed = EventTail(store.dir / "events.jsonl"), Feed.for_store(store)
        self._write("retry: 2000\n\n")
        sent_view = last_beat = 0.0
        while not dash.stopping.is_set():
            events = tail.read()
            feed.apply_all(events)
            chunk = "".join(f"id: {n}\nevent: event\ndata: {json.dumps(e, ensure_ascii=False)}\n\n"
                            for n, e in events if n > since) if raw else ""
            live = store.is_live()
            now = time.monotonic()
            # A live run's clocks move even when nothing happens: a fresh view every second.
            if events or sent_view == 0.0 or (live and now - sent_view >= 1.0):
                view = feed.view(live=live)
                chunk += f"event: view\ndata: {json.dumps(view, ensure_ascii=False)}\n\n"
                sent_view = now
            if feed.state == "finished" and not live:
                self._write(chunk + "event: end\ndata: {}\n\n")
                return
            if not chunk and now - last_beat >= dash.heartbeat:
                chunk = ": ping\n\n"
            if chunk:
                self._write(chunk)
                last_beat = now
            dash.stopping.wait(dash.poll)

    def _write(self, text: str) -> None:
        self.wfile.write(text.encode("utf-8", errors="surrogateescape"))
        self.wfile.flush()
