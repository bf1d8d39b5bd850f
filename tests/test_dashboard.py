"""The web command center: its HTTP endpoints and event stream against real runs of scripted
agents, and the page itself in a real headless browser (Debian's chromium through Playwright)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import WSWARM, Repo, task, wswarm
from live_run import WAITING_AGENT, LiveRun, need_tool
from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.ui.dashboard import Dashboard

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Server:
    """`wswarm dashboard --port 0 --no-open` in the background."""

    def __init__(self, repo: Repo, *args: str) -> None:
        self.proc = subprocess.Popen([*WSWARM, "dashboard", "--port", "0", "--no-open", *args], cwd=repo.path,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.proc.stderr.read() if self.proc.stderr else ""

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
        req = urllib.request.Request(self.url.rstrip("/") + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                return res.status, res.read().decode(), dict(res.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)

    def json(self, path: str) -> Any:
        status, body, _ = self.get(path)
        assert status == 200, body
        return json.loads(body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.communicate(timeout=10)


def sse(url: str, headers: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """The messages of an event stream: {"id", "event", "data"} or {"comment"}; ends with the stream."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=20) as res:
        assert res.headers["Content-Type"].startswith("text/event-stream")
        yield from sse_lines(res)


def until(stream: Iterator[dict[str, str]], predicate: Any) -> list[dict[str, str]]:
    seen = []
    for message in stream:
        seen.append(message)
        if predicate(message):
            return seen
    raise AssertionError(f"the stream ended first; last messages: {seen[-3:]}")


def view_of(message: dict[str, str]) -> dict[str, Any] | None:
    return json.loads(message["data"]) if message.get("event") == "view" else None


@pytest.fixture
def live(repo: Repo, agent_script: Any, tmp_path: Path) -> Iterator[LiveRun]:
    run = LiveRun(repo, agent_script(WAITING_AGENT),
                  [task("api", type="backend", description="Build <img src=x onerror=alert(1)> the API"),
                   task("ui", type="frontend", dependencies=["api"]), task("docs/guide", type="docs")],
                  tmp_path / "go", agents=2)
    try:
        yield run
    finally:
        run.stop()


def test_endpoints_and_event_stream_of_a_live_run(repo: Repo, live: LiveRun) -> None:
    live.wait_event("agent-activity", "api")
    live.wait_event("agent-activity", "docs/guide")
    server = Server(repo)
    try:
        base = f"/api/runs/{live.id}"
        runs = server.json("/api/runs")
        assert runs["default"] == live.id and runs["runs"][0]["id"] == live.id and runs["runs"][0]["state"] == "running"
        assert [(t["id"], t["status"]) for t in server.json(base + "/status")["tasks"]] == [
            ("api", "running"), ("ui", "pending"), ("docs/guide", "running")]
        view = server.json(base + "/view")
        assert {(a["task"], a["status"]) for a in view["agents"]} == {("api", "running"), ("docs/guide", "running")}
        assert view["mission"]["active_agents"] == 2 and view["progress"] == {**view["progress"], "merged": 0, "total": 3}
        dag = server.json(base + "/dag")
        assert {(n["id"], n["layer"]) for n in dag["nodes"]} == {("api", 0), ("docs/guide", 0), ("ui", 1)}
        assert dag["edges"] == [{"from": "api", "to": "ui"}]

        stream = sse(server.url.rstrip("/") + base + "/events")
        first = until(stream, lambda m: view_of(m) is not None)
        events = [json.loads(m["data"]) for m in first if m.get("event") == "event"]
        assert events[0]["kind"] == "run-started" and [int(m["id"]) for m in first if "id" in m] == \
            list(range(len(events)))
        live.release("api")
        seen = until(stream, lambda m: (v := view_of(m)) is not None and v["progress"]["merged"] == 1)
        merged = [json.loads(m["data"]) for m in seen if m.get("event") == "event"
                  and json.loads(m["data"])["kind"] == "merged"]
        assert [e["task"] for e in merged] == ["api"] and merged[0]["files"] == ["api.txt"]
        assert live.finish()[0] == 0
        rest = until(stream, lambda m: m.get("event") == "end")
        final = [v for m in rest if (v := view_of(m))][-1]
        assert final["state"] == "finished" and final["progress"]["merged"] == 3
        ids = [int(m["id"]) for m in first + seen + rest if "id" in m]
        assert ids == list(range(len(ids)))              # every event once, in log order, numbered by line
        total = len(ids)

        # A finished run replays from the start, or from where a client left off, then ends.
        replay = list(sse(server.url.rstrip("/") + base + "/events"))
        assert [int(m["id"]) for m in replay if "id" in m] == list(range(total))
        assert replay[-1]["event"] == "end"
        resumed = list(sse(server.url.rstrip("/") + base + "/events", {"Last-Event-ID": str(total - 3)}))
        assert [int(m["id"]) for m in resumed if "id" in m] == [total - 2, total - 1]
        assert [int(m["id"]) for m in sse(server.url.rstrip("/") + base + f"/events?since={total - 2}")
                if "id" in m] == [total - 1]
        # What the page asks for: the folded views only, not the whole log again.
        views_only = list(sse(server.url.rstrip("/") + base + "/events?events=0"))
        assert {m["event"] for m in views_only if "event" in m} == {"view", "end"}
        assert json.loads(next(m for m in views_only if m.get("event") == "view")["data"])["state"] == "finished"

        # Tasks with their attempts, gate reports, diffs and logs; ids with a slash travel encoded.
        tasks = {t["id"]: t for t in server.json(base + "/tasks")}
        guide = server.json(base + "/tasks/" + urllib.parse.quote("docs/guide", safe=""))
        assert guide == tasks["docs/guide"] and guide["status"] == "merged"
        [attempt] = guide["attempts"]
        assert attempt["outcome"] == "merged" and attempt["gate"]["passed"] is True
        assert [f["path"] for f in attempt["files"]] == ["docs_guide.txt"] and attempt["logs"] == ["agent.log"]
        status, diff, headers = server.get(base + "/tasks/docs%2Fguide/attempts/1/diff")
        assert status == 200 and headers["Content-Type"].startswith("text/x-diff")
        assert "+++ b/docs_guide.txt\n" in diff and "+docs/guide\n" in diff
        status, log, _ = server.get(base + "/tasks/docs%2Fguide/attempts/1/logs/agent.log")
        assert status == 200 and "docs/guide: wrote docs_guide.txt" in log

        # What must not be reachable.
        assert server.get(base + "/tasks/docs%2Fguide/attempts/1/logs/..%2F..%2F..%2Fstate.db")[0] == 404
        assert server.get(base + "/tasks/nope")[0] == 404
        assert server.get(base + "/tasks/docs%2Fguide/attempts/%C2%B2/diff")[0] == 404     # '²' is no number
        assert server.get("/api/runs/nope/status")[0] == 404
        assert server.get("/static/../../state.db")[0] == 404
        assert server.get("/api/runs", {"Host": "evil.example:80"})[0] == 403
    finally:
        server.stop()
    assert server.proc.returncode == 0                   # Ctrl-C is how a user stops it


def test_the_page_ships_every_asset_itself(repo: Repo, agent_script: Any, tmp_path: Path) -> None:
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("solo")], tmp_path / "go")
    assert run.finish()[0] == 0
    server = Server(repo)
    try:
        for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
            status, body, headers = server.get(path)
            assert status == 200 and headers["Content-Type"].startswith(kind)
            assert "default-src 'self'" in headers["Content-Security-Policy"]
            # The one URL in them is SVG's namespace name, which is never fetched.
            assert set(re.findall(r"https?://[^\s\"'`)]+", body)) <= {"http://www.w3.org/2000/svg"}, path
            assert "innerHTML" not in body and "insertAdjacentHTML" not in body and "document.write" not in body
    finally:
        server.stop()


def test_a_taken_port_and_a_repository_without_runs_are_usage_errors(repo: Repo, agent_script: Any,
                                                                     tmp_path: Path) -> None:
    res = wswarm(repo.path, "dashboard", "--no-open")
    assert res.returncode == 2 and res.stderr.startswith("wswarm: this repository has no wswarm runs yet")
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("solo")], tmp_path / "go")
    assert run.finish()[0] == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = wswarm(repo.path, "dashboard", "--port", str(port), "--no-open")
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [f"wswarm: port {port} on 127.0.0.1 is already in use",
                                       "hint: pick another with --port P, or --port 0 for any free port"]
    assert res.stdout == ""


def test_an_interrupted_run_keeps_its_stream_open_with_heartbeats(repo: Repo, agent_script: Any,
                                                                  tmp_path: Path) -> None:
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("x")], tmp_path / "go")
    run.wait_event("agent-started", "x")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(timeout=30) == 130
    dash = Dashboard(GitRepo.discover(repo.path), run=run.id, port=0, heartbeat=0.2)
    thread = threading.Thread(target=dash.serve, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=10)
        conn.request("GET", f"/api/runs/{run.id}/events")
        stream = sse_lines(conn.getresponse())
        seen = until(stream, lambda m: m.get("comment") == "ping")
        views = [v for m in seen if (v := view_of(m))]
        assert views[-1]["state"] == "interrupted" and views[-1]["tasks"][0]["status"] == "pending"
        until(stream, lambda m: m.get("comment") == "ping")     # and again: the stream stays open
        conn.close()
    finally:
        dash.stop()
        thread.join(timeout=10)


def sse_lines(res: Iterable[bytes]) -> Iterator[dict[str, str]]:
    """The messages of an event stream, its `: comment` lines included, until it ends."""
    message: dict[str, str] = {}
    for raw in res:
        line = raw.decode().rstrip("\n")
        if not line:
            if message:
                yield message
            message = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(": ")
            message[name] = value


def test_the_page_in_a_real_browser_follows_a_live_run(repo: Repo, live: LiveRun, tmp_path: Path) -> None:
    chromium = need_tool("/usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    live.wait_event("agent-activity", "api")
    server = Server(repo)
    shots = Path(os.environ.get("WSWARM_ARTIFACTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    requests: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("request", lambda req: requests.append(req.url))
            page.goto(server.url)
            page.wait_for_selector('.agent[data-task="api"][data-status="running"]')
            page.wait_for_selector('.agent[data-task="docs/guide"][data-status="running"]')
            assert page.inner_text("#m-active") == "2" and page.inner_text("#m-completed") == "0 / 3"
            page.wait_for_function("document.querySelector('.agent[data-task=\"api\"] .agent-activity')"
                                   ".textContent.startsWith('api: working')")
            assert "st-running" in (page.get_attribute('#dag .node[data-task="api"]', "class") or "")
            page.evaluate("window.sameDocument = 42")
            page.screenshot(path=str(shots / "dashboard-live.png"), full_page=True)

            live.release("api")
            page.wait_for_selector('#dag .node[data-task="api"].st-merged')
            page.wait_for_function("document.getElementById('m-completed').textContent === '1 / 3'")
            page.wait_for_selector('.agent[data-task="ui"][data-status="running"]')   # its dependent started
            assert page.evaluate("window.sameDocument") == 42                           # updated, not reloaded
            assert page.locator('#activity li[data-kind="merged"]').count() == 1

            page.click('#tasks tr[data-task="api"]')
            page.wait_for_selector('#detail .attempt[data-attempt="1"]')
            assert "Build <img src=x onerror=alert(1)> the API" in page.inner_text("#detail-title")
            assert page.locator("img").count() == 0                                   # text, never markup
            page.click('#detail button:text-is("diff")')
            page.wait_for_selector("#detail pre.diff")
            assert "+api" in page.inner_text("#detail pre.diff")

            live.release("all")
            page.wait_for_selector('body[data-state="finished"]', timeout=60_000)
            assert page.inner_text("#m-completed") == "3 / 3"
            page.screenshot(path=str(shots / "dashboard-finished.png"), full_page=True)
            browser.close()
    finally:
        server.stop()
    assert problems == []
    assert all(url.startswith(server.url) or url.startswith("data:") for url in requests), requests
    assert (shots / "dashboard-live.png").stat().st_size > 10_000
    if shutil.which("file"):
        assert "PNG image" in subprocess.run(["file", str(shots / "dashboard-finished.png")],
                                             capture_output=True, text=True).stdout


def test_a_bug_behind_an_endpoint_is_a_500_with_its_traceback_in_a_file(repo: Repo, agent_script: Any,
                                                                        tmp_path: Path) -> None:
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("solo")], tmp_path / "go")
    assert run.finish()[0] == 0
    dash = Dashboard(GitRepo.discover(repo.path), run=run.id, port=0)
    thread = threading.Thread(target=dash.serve, daemon=True)
    thread.start()
    # A run folder whose database has no tables: reading it fails in a way no check foresaw.
    broken = repo.state_dir / "runs" / "20990101-000000-dead"
    broken.mkdir()
    (broken / "state.db").write_bytes(b"")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=10)
        conn.request("GET", "/api/runs")
        res = conn.getresponse()
        body = json.loads(res.read())
        assert res.status == 500 and body["error"].startswith("internal error: OperationalError")
        assert "Traceback" in Path(body["traceback"]).read_text()
        shutil.rmtree(broken)
        conn.request("GET", "/api/runs")                  # the server is still serving
        res = conn.getresponse()
        assert res.status == 200 and [r["id"] for r in json.loads(res.read())["runs"]] == [run.id]
        conn.close()
    finally:
        dash.stop()
        thread.join(timeout=10)


LEAKY_CLAUDE = """\
#!{python}
# Speaks the Claude Code CLI's stream-json; writes a key, so the gate fails the task.
import json, sys
from pathlib import Path
sys.stdin.readline()   # the prompt: one stream-json line; stdin stays open for news
Path("cfg.py").write_text('AWS_KEY = "' + "AKIA" + "Z7Q2LMN4VWX8TR3P" + '"\\n')
for kind in ({{"type": "system", "subtype": "init"}}, {{"type": "result", "subtype": "success", "is_error": False,
                                                     "result": "done"}}):
    print(json.dumps({{**kind, "session_id": "{session}"}}), flush=True)
"""


def test_the_attempt_view_shows_findings_and_the_claude_session(repo: Repo, tmp_path: Path) -> None:
    chromium = need_tool("/usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    session = "9e8d7c6b-1111-4222-8333-444455556666"
    claude = tmp_path / "claude"
    claude.write_text(LEAKY_CLAUDE.format(python=sys.executable, session=session))
    claude.chmod(0o755)
    repo.write("wswarm.toml", f'[agents]\ndefault = "claude"\n\n[agents.claude]\nbinary = "{claude}"\n')
    repo.commit_all("claude")
    (tmp_path / "plan.json").write_text(json.dumps([task("cfg", files=["cfg.py"])]))
    res = wswarm(repo.path, "start", "--plan", str(tmp_path / "plan.json"), "--max-attempts", "1")
    assert res.returncode == 1, res.stderr
    server = Server(repo)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url)
            page.click('#tasks tr[data-task="cfg"]')
            page.wait_for_selector('#detail .attempt[data-attempt="1"] .finding')
            finding = page.inner_text("#detail .finding")
            assert finding.startswith("secrets cfg.py:1 possible AWS access key id: AKIA")
            assert "Z7Q2LMN4VWX8TR3P" not in page.content()
            assert session in page.inner_text('#detail .attempt[data-attempt="1"] .session')
            resume = page.inner_text("#detail .resume")
            assert resume.startswith("cd ") and resume.endswith(f" && claude --resume {session}")
            browser.close()
    finally:
        server.stop()
