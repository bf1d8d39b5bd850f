"""Attacks on the parts of wswarm that model output and agents reach, each run for real: a
catastrophic pattern given to the search tool, a key in a file's name, a flood of half-sent
requests at the dashboard.

Fake keys are assembled at run time, so this file holds no literal the secret patterns would match.
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import Repo, wait_for, write_plan, wswarm
from live_run import WAITING_AGENT, LiveRun
from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.ui.dashboard import Dashboard

# --- search: a pattern that backtracks without end ----------------------------------------------

# Runs the search tool in a thread of its own process, as the agent loop does, while the main
# thread ticks every 10 ms. `re` would hold the GIL for the whole match: no ticks, and no end.
ATTACK = """
import json, sys, threading, time
from pathlib import Path
from worktree_swarm.agents.sandbox import Runner
from worktree_swarm.agents.tool_specs import call_tool
from worktree_swarm.agents.tools import Workspace

root, pattern = Path(sys.argv[1]), sys.argv[2]
ws = Workspace(root)
out = {}

def attack():
    started = time.monotonic()
    out["text"], out["is_error"] = call_tool("search", {"pattern": pattern}, workspace=ws,
                                             runner=Runner(ws, root.parent / "scratch", sandbox=False))
    out["seconds"] = time.monotonic() - started

worker = threading.Thread(target=attack)
ticks = 0
worker.start()
while worker.is_alive():
    time.sleep(0.01)
    ticks += 1
out["ticks"] = ticks
print(json.dumps(out))
"""


def search_attack(root: Path, pattern: str) -> dict[str, object]:
    res = subprocess.run([sys.executable, "-c", ATTACK, str(root), pattern], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_a_catastrophic_pattern_is_stopped_and_never_holds_the_interpreter(repo: Repo) -> None:
    repo.write("app/data.txt", "header\n" + "a" * 40 + "!\n")
    out = search_attack(repo.path, "(a|a)+$")
    assert out["is_error"] is True
    assert "stopped after 2 s of matching, at app/data.txt:2" in str(out["text"])
    seconds = float(out["seconds"])  # type: ignore[arg-type]
    assert 1.5 < seconds < 5
    # The main thread went on all along: about one tick per 10 ms of the search.
    assert int(out["ticks"]) > seconds * 100 * 0.5  # type: ignore[call-overload]


def test_the_time_budget_is_for_the_whole_search_not_each_line(repo: Repo) -> None:
    # Each line alone takes a fraction of a second (0.2-0.3 s here); sixty of them take many.
    repo.write("app/data.txt", ("a" * 27 + "!\n") * 60)
    out = search_attack(repo.path, "(a|aa)+$")
    assert out["is_error"] is True and "stopped after 2 s of matching" in str(out["text"]), out
    assert float(out["seconds"]) < 4  # type: ignore[arg-type]


@pytest.mark.parametrize(("pattern", "message"), [
    ("(?:a{65535}){65535}", "repeats too much"),
    ("((a{100}){100}){100}", "repeats too much"),
    ("x" * 1001, "over the limit of 1000"),
])
def test_a_pattern_that_would_take_gigabytes_to_compile_is_refused(repo: Repo, pattern: str, message: str) -> None:
    out = search_attack(repo.path, pattern)
    assert out["is_error"] is True and message in str(out["text"])
    assert float(out["seconds"]) < 1  # type: ignore[arg-type]


def test_ordinary_patterns_still_search(repo: Repo) -> None:
    repo.write("app/dates.py", "STAMP = '2024-01-31'\nUUID = '0f8fad5b-d9cb-469f-a165-70867728950e'\n")
    out = search_attack(repo.path, r"\d{4}-\d{2}-\d{2}|[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}")
    assert out["is_error"] is False
    assert str(out["text"]).splitlines() == ["app/dates.py:1: STAMP = '2024-01-31'",
                                             "app/dates.py:2: UUID = '0f8fad5b-d9cb-469f-a165-70867728950e'"]


# --- the gate: a key in a file's name -------------------------------------------------------------

AWS_KEY = "AK" + "IA" + "Q3TZ7NW2LX5RBH8K"
ANTHROPIC_KEY = "sk-" + "ant-" + "api03-" + "Zr8kQ2Lw9" * 3


def feature_branch(repo: Repo, changes: dict[str, str], moves: dict[str, str] | None = None) -> None:
    """Branch `feature` off main with CHANGES written and MOVES renamed; the checkout stays on main."""
    repo.git("checkout", "-q", "-b", "feature")
    for rel, text in changes.items():
        repo.write(rel, text)
    for old, new in (moves or {}).items():
        (repo.path / new).parent.mkdir(parents=True, exist_ok=True)
        repo.git("mv", old, new)
    repo.commit_all("feature")
    repo.git("checkout", "-q", "main")


def test_a_key_in_an_added_or_renamed_path_fails_the_gate_and_is_never_printed(repo: Repo) -> None:
    feature_branch(repo, {f"keys/{AWS_KEY}.txt": "nothing secret inside\n"},
                   moves={"app/core.py": f"app/{ANTHROPIC_KEY}/core.py"})
    for args in [(), ("--json",)]:
        res = wswarm(repo.path, "gate", "--ref", "feature", *args)
        assert res.returncode == 1, res.stdout + res.stderr
        for key in (AWS_KEY, ANTHROPIC_KEY):
            assert key[4:] not in res.stdout + res.stderr
    res = wswarm(repo.path, "gate", "--ref", "feature")
    assert "gate FAILED: secrets ✗" in res.stdout
    assert "keys/AKIA…[redacted].txt: possible AWS access key id in the file's name: AKIA…" in res.stdout
    assert "app/sk-a…[redacted]/core.py: possible Anthropic API key in the file's name: sk-a…" in res.stdout


def test_a_placeholder_key_or_a_name_already_on_main_is_not_a_finding(repo: Repo) -> None:
    repo.write(f"old/{AWS_KEY}.txt", "one\n")
    repo.commit_all("a name main already had")
    feature_branch(repo, {"docs/" + "AKIA" + "IOSFODNN7" + "EXAMPLE.txt": "the docs' example key\n",
                          f"old/{AWS_KEY}.txt": "one\ntwo\n"})
    res = wswarm(repo.path, "gate", "--ref", "feature")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "secrets ✓" in res.stdout.splitlines()[1]


def test_a_key_named_file_renamed_away_is_still_found_in_the_branch_history(repo: Repo) -> None:
    feature_branch(repo, {f"keys/{AWS_KEY}.txt": "x\n"})
    repo.git("checkout", "-q", "feature")
    repo.git("mv", f"keys/{AWS_KEY}.txt", "keys/plain.txt")
    repo.commit_all("hide it")
    repo.git("checkout", "-q", "main")
    res = wswarm(repo.path, "gate", "--ref", "feature")
    assert res.returncode == 1 and AWS_KEY[4:] not in res.stdout
    assert "possible AWS access key id in the file's name: AKIA… (in commit" in res.stdout


# --- the dashboard: a flood of connections --------------------------------------------------------

@contextmanager
def serving(dash: Dashboard) -> Iterator[Dashboard]:
    thread = threading.Thread(target=dash.serve, daemon=True)
    thread.start()
    try:
        yield dash
    finally:
        dash.stop()
        thread.join(timeout=10)


def request(dash: Dashboard, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=10)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        return res.status, res.read().decode()
    finally:
        conn.close()


def get(dash: Dashboard, path: str) -> str:
    status, body = request(dash, path)
    assert status == 200, body
    return body


def test_half_sent_requests_hold_no_thread_and_are_closed_after_the_timeout(repo: Repo) -> None:
    dash = Dashboard(GitRepo.discover(repo.path), run="none", port=0, request_timeout=2.0)
    before = threading.active_count()
    flood: list[socket.socket] = []
    trickle: list[socket.socket] = []
    with serving(dash):
        try:
            for n in range(203):
                sock = socket.create_connection(("127.0.0.1", dash.port), timeout=5)
                sock.sendall(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1")   # and never the rest
                (flood if n < 200 else trickle).append(sock)
            opened = time.monotonic()
            time.sleep(0.5)
            threads = threading.active_count()
            page = get(dash, "/")
            answered = time.monotonic() - opened - 0.5
            # Every connection ends with a 408, the slow ones too (a byte every 0.2 s is not a request).
            replies: dict[socket.socket, bytes] = {}
            with selectors.DefaultSelector() as selector:
                for sock in flood + trickle:
                    selector.register(sock, selectors.EVENT_READ)
                while selector.get_map() and time.monotonic() - opened < 8:
                    for sock in trickle:
                        if sock not in replies:
                            try:
                                sock.sendall(b"x")
                            except OSError:   # the server has closed it; the read below sees that
                                pass
                    for key, _ in selector.select(0.2):
                        sock = key.fileobj  # type: ignore[assignment]
                        try:
                            data = sock.recv(4096)
                        except ConnectionResetError:   # closed with our last bytes unread: a reset
                            data = b""
                        replies[sock] = replies.get(sock, b"") + data
                        if not data:
                            selector.unregister(sock)
                            replies[sock] += b"<closed>"
            closed = time.monotonic() - opened
        finally:
            for sock in flood + trickle:
                sock.close()
    # The serving thread, and no thread per connection (before: one each, 200 and more).
    assert threads <= before + 1, threads - before
    assert "<html" in page.lower() and answered < 2
    assert len(replies) == 203 and all(r.endswith(b"<closed>") for r in replies.values())
    assert all(replies[sock].startswith(b"HTTP/1.0 408 Request Timeout\r\n") for sock in flood)
    assert 2 <= closed < 5


def test_workers_are_few_and_an_event_stream_outlives_the_request_timeout(repo: Repo, agent_script: Any,
                                                                          tmp_path: Path) -> None:
    run = LiveRun(repo, agent_script(WAITING_AGENT), [{"id": "x", "description": "wait"}], tmp_path / "go")
    run.wait_event("agent-started", "x")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(timeout=30) == 130
    dash = Dashboard(GitRepo.discover(repo.path), run=run.id, port=0, heartbeat=0.2, workers=2, request_timeout=1.0)
    with serving(dash):
        streams = [http.client.HTTPConnection("127.0.0.1", dash.port, timeout=10) for _ in range(2)]
        responses: list[http.client.HTTPResponse] = []
        try:
            for conn in streams:      # an interrupted run's stream stays open: each holds a worker
                conn.request("GET", f"/api/runs/{run.id}/events?events=0")
                responses.append(conn.getresponse())
                assert responses[-1].status == 200
            status, body = request(dash, "/")
            assert (status, body) == (503, "503 Service Unavailable\n")
            time.sleep(1.5)           # past the request timeout, the streams go on
            for res in responses:
                wait_for(lambda: res.readline() == b": ping\n", timeout=5, what="a heartbeat")
            responses[0].close()      # the page went away: its worker is free at the next heartbeat
            assert wait_for(lambda: request(dash, "/")[0] == 200, timeout=5, what="a free worker")
        finally:
            for res in responses:
                res.close()
            for conn in streams:
                conn.close()


def test_the_dashboard_shows_a_key_named_file_redacted(repo: Repo, agent_script: Any) -> None:
    agent = agent_script(f'Path("keys").mkdir()\nPath("keys/{AWS_KEY}.txt").write_text("x\\n")\n')
    write_plan(repo.path / "plan.json", [{"id": "leak", "description": "add a file"}])
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent, "--max-attempts", "1")
    assert res.returncode == 1, res.stderr
    run = next((repo.state_dir / "runs").iterdir()).name
    with serving(Dashboard(GitRepo.discover(repo.path), run=run, port=0)) as dash:
        answers = {path: get(dash, f"/api/runs/{run}/{path}")
                   for path in ["tasks", "view", "status", "events", "tasks/leak/attempts/1/diff"]}
    attempt = json.loads(answers["tasks"])[0]["attempts"][0]
    assert [f["path"] for f in attempt["files"]] == ["keys/AKIA…[redacted].txt"]
    assert "possible AWS access key id in the file's name" in answers["tasks"]
    assert "+++ b/keys/AKIA…[redacted].txt" in answers["tasks/leak/attempts/1/diff"]
    assert "keys/AKIA…[redacted].txt" in answers["events"]
    for path, body in answers.items():
        assert AWS_KEY[4:] not in body, path
