"""`wswarm dashboard`: the web command center, a stdlib HTTP server on 127.0.0.1.

JSON endpoints for runs, tasks (attempts, gate reports, diffs, logs), the DAG and what the run
cost (its figures); a server-sent event stream that tails the run's events.jsonl and sends, beside
each event, the view model folded by ui.feed — the page draws that and keeps no truth of its own.
Assets ship in ui/static/.
"""

from __future__ import annotations

import errno
import io
import json
import os
import selectors
import socket
import sys
import threading
import time
import urllib.parse
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from worktree_swarm.util.errors import RunNotFoundError, UsageError, WswarmError, crash_log
from worktree_swarm.util.redact import redact_secrets
from worktree_swarm.git.repo import Repo
from worktree_swarm.store.run_store import RunStore, find_run
from worktree_swarm.commands.status import status_data
from worktree_swarm.ui import api
from worktree_swarm.ui.feed import EventTail, Feed
from worktree_swarm.store import layout

HOST = "127.0.0.1"
DEFAULT_PORT = 8767
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
# Everything the page loads comes from this server: no CDN, no fonts from elsewhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
WORKERS = 32              # requests answered at once (an open page holds one, its event stream)
REQUEST_TIMEOUT = 10.0    # seconds a client has to send its request head; also each write's limit
WAITING = 256             # connections still sending their head; beyond it the oldest is dropped
HEAD_LIMIT = 64 * 1024    # bytes of a request head


class Dashboard:
    """The server for one repository; RUN is the run the page opens first."""

    def __init__(self, repo: Repo, *, run: str, port: int = DEFAULT_PORT, poll: float = 0.25,
                 heartbeat: float = 15.0, workers: int = WORKERS, request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.repo = repo
        self.run = run
        self.poll = poll
        self.heartbeat = heartbeat
        self.stopping = threading.Event()
        try:
            self.httpd = _Server((HOST, port), _Handler, workers=workers, timeout=request_timeout)
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


class _Server(HTTPServer):
    """An HTTP server whose threads never wait for a client to finish sending its request.

    The serving thread reads every connection's request head itself, all of them in one selector,
    and closes one that has not sent it within TIMEOUT; only a complete head gets a handler thread,
    at most WORKERS at once, and one more is answered 503. A thread per connection, as
    ThreadingHTTPServer has it, let 3,000 half-sent requests hold 3,000 threads.
    """

    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, workers: int,
                 timeout: float) -> None:
        super().__init__(address, handler)
        self.request_timeout = timeout
        self.slots = threading.BoundedSemaphore(workers)
        self.heads: dict[socket.socket, bytes] = {}   # handed from the serving thread to a handler
        # oldest first: (deadline, the head so far, the client's address)
        self._waiting: dict[socket.socket, tuple[float, bytes, Any]] = {}
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._idle.clear()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.socket, selectors.EVENT_READ)
                while not self._stop.is_set():
                    wait = poll_interval
                    if self._waiting:
                        wait = min(wait, max(next(iter(self._waiting.values()))[0] - time.monotonic(), 0))
                    for key, _ in selector.select(wait):
                        if key.fileobj is self.socket:
                            self._accept(selector)
                        else:
                            self._read(selector, key.fileobj)  # type: ignore[arg-type]
                    now = time.monotonic()
                    for conn, (deadline, _, _) in list(self._waiting.items()):
                        if deadline > now:
                            break
                        self._drop(selector, conn, b"408 Request Timeout")
        finally:
            for conn in self._waiting:
                conn.close()
            self._waiting.clear()
            self._stop.clear()
            self._idle.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._idle.wait()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            conn, address = self.socket.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:   # out of file descriptors: let some close before trying again
            self._stop.wait(0.05)
            return
        if len(self._waiting) >= WAITING:
            self._drop(selector, next(iter(self._waiting)), b"503 Service Unavailable")
        conn.setblocking(False)
        self._waiting[conn] = (time.monotonic() + self.request_timeout, b"", address)
        selector.register(conn, selectors.EVENT_READ)

    def _read(self, selector: selectors.BaseSelector, conn: socket.socket) -> None:
        if conn not in self._waiting:   # dropped earlier in this same round
            return
        deadline, head, address = self._waiting[conn]
        try:
            data = conn.recv(HEAD_LIMIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self._drop(selector, conn, None)
        head += data
        if b"\r\n\r\n" not in head and b"\n\n" not in head:
            if len(head) > HEAD_LIMIT:
                return self._drop(selector, conn, b"431 Request Header Fields Too Large")
            self._waiting[conn] = (deadline, head, address)
            return
        selector.unregister(conn)
        del self._waiting[conn]
        if not self.slots.acquire(blocking=False):
            return self._refuse(conn, b"503 Service Unavailable")
        conn.setblocking(True)
        self.heads[conn] = head
        threading.Thread(target=self._answer, args=(conn, address), daemon=True).start()

    def _answer(self, conn: socket.socket, address: Any) -> None:
        try:
            self.finish_request(conn, address)
        except Exception:
            self.handle_error(conn, address)
        finally:
            self.heads.pop(conn, None)
            self.shutdown_request(conn)
            self.slots.release()

    def _drop(self, selector: selectors.BaseSelector, conn: socket.socket, status: bytes | None) -> None:
        selector.unregister(conn)
        del self._waiting[conn]
        if status is None:
            conn.close()
        else:
            self._refuse(conn, status)

    @staticmethod
    def _refuse(conn: socket.socket, status: bytes) -> None:
        """Answer STATUS and close, never waiting for the client: a fresh socket takes a few
        hundred bytes without blocking, and a client that has not read them has no answer."""
        try:
            conn.setblocking(False)
            conn.send(b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
                      b"Retry-After: 1\r\nConnection: close\r\nContent-Length: " + str(len(status) + 1).encode() +
                      b"\r\n\r\n" + status + b"\n")
        except OSError:
            pass   # it went away: nothing to tell it
        finally:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    server_version = "wswarm-dashboard"

    def setup(self) -> None:
        """Read the request from the head the server already took in; the socket's timeout (the
        server's) then bounds every write, so a client that stops reading frees its thread."""
        assert isinstance(self.server, _Server)
        super().setup()
        self.connection.settimeout(self.server.request_timeout)
        self.rfile.close()
        self.rfile = io.BytesIO(self.server.heads.pop(self.request, b""))

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
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass   # the page went away mid-answer, or stopped reading it
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
                feed.apply_all(EventTail(store.dir / layout.EVENTS).read())
                return self._json(feed.view(live=store.is_live()))
            if rest == ["dag"]:
                return self._json(api.dag(store))
            if rest == ["figures"]:
                return self._json(api.figures(store))
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

    # Every answer made of a run's data is redacted as the secrets check would: an agent can put a
    # key in a file's name, which then sits in events, gate reports and diffs.
    def _json(self, data: object, status: HTTPStatus = HTTPStatus.OK) -> None:
        text = redact_secrets(json.dumps(data, ensure_ascii=False))
        self._send(status, text.encode(), "application/json; charset=utf-8")

    def _text(self, text: str, kind: str = "text/plain") -> None:
        self._send(HTTPStatus.OK, redact_secrets(text).encode("utf-8", errors="surrogateescape"),
                   f"{kind}; charset=utf-8")

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
        tail, feed = EventTail(store.dir / layout.EVENTS), Feed.for_store(store)
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
        self.wfile.write(redact_secrets(text).encode("utf-8", errors="surrogateescape"))
        self.wfile.flush()
