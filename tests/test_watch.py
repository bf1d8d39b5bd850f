"""Watching a run from another terminal: `status --watch`, `logs --follow`, and the command
agent's output turned into activity events. Real runs of scripted agents, real processes."""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


from conftest import WSWARM, Repo, events, task, wait_for, wswarm
from live_run import WAITING_AGENT, LiveRun, need_tool


def read_until(proc: subprocess.Popen[str], text: str, *, timeout: float = 30) -> str:
    """What PROC printed until TEXT showed (read from the pipe itself, so communicate() gets the rest)."""
    assert proc.stdout is not None
    fd, got, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while text.encode() not in got:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {text!r} within {timeout}s; printed so far: {got.decode()!r}"
        chunk = os.read(fd, 65536)
        assert chunk, f"the output ended before {text!r}: {got.decode()!r}"
        got += chunk
    return got.decode()


def popen(repo: Repo, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*WSWARM, *args], cwd=repo.path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_status_watch_follows_a_live_run_to_its_end(repo: Repo, agent_script: Any, tmp_path: Path) -> None:
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("a"), task("b", dependencies=["a"])], tmp_path / "go")
    try:
        run.wait_event("agent-started", "a")
        watcher = popen(repo, "status", "--watch")
        seen = read_until(watcher, "agent-started")    # it has printed the run so far
        assert watcher.poll() is None                  # and waits while the run goes on
        code, _, err = run.finish()
        assert code == 0, err
        out, werr = watcher.communicate(timeout=30)    # and ends by itself when the run does
        out = seen + out
    finally:
        run.stop()
    assert watcher.returncode == 0, werr
    lines = out.splitlines()
    kinds = [line.split()[1] for line in lines]
    assert kinds[0] == "run-started" and kinds[-1] == "run-finished"
    assert [line.split()[2] for line in lines if line.split()[1] == "merged"] == ["a", "b"]
    assert "agent-activity" not in kinds               # several a second: they stay in the logs


def test_status_watch_on_a_terminal_and_ctrl_c_leaves_the_run_alone(repo: Repo, agent_script: Any,
                                                                    tmp_path: Path) -> None:
    tmux = need_tool("tmux")
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("one"), task("two")], tmp_path / "go")
    socket = f"wswarm-test-{tmp_path.name}"
    done = tmp_path / "watch-exit"
    script = tmp_path / "watch.sh"
    # The shell survives the Ctrl-C (a trap, which its child does not inherit) to record the exit code.
    script.write_text(f"trap true INT\ncd {shlex.quote(str(repo.path))}\n{shlex.quote(sys.executable)} -m worktree_swarm status "
                      f"--watch\necho $? > {shlex.quote(str(done))}\nsleep 30\n")

    def screen() -> str:
        return subprocess.run([tmux, "-L", socket, "capture-pane", "-p"], capture_output=True, text=True).stdout

    try:
        run.wait_event("agent-activity", "one")
        subprocess.run([tmux, "-L", socket, "new-session", "-d", "-x", "120", "-y", "24", "sh", str(script)],
                       check=True)
        text = wait_for(lambda: (lambda s: s if "one: working, step" in s and "two:" in s else None)(screen()),
                        what="the watcher's grid")
        assert f"wswarm run {run.id}" in text and "0/2 merged" in text and "agent-2" in text
        subprocess.run([tmux, "-L", socket, "send-keys", "C-c"], check=True)
        wait_for(done.exists, what="the watcher to exit")
        assert done.read_text().strip() == "0"
        assert run.proc.poll() is None                 # Ctrl-C reached the watcher only
        code, _, err = run.finish()
        assert code == 0, err
    finally:
        subprocess.run([tmux, "-L", socket, "kill-server"], capture_output=True)
        run.stop()


def test_status_watch_of_a_finished_run_returns_at_once_and_refuses_json(repo: Repo, agent_script: Any,
                                                                        tmp_path: Path) -> None:
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("solo")], tmp_path / "go")
    assert run.finish()[0] == 0
    started = time.monotonic()
    res = wswarm(repo.path, "status", "--watch", run.id)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - started < 10
    assert res.stdout.splitlines()[-1].split()[1] == "run-finished"
    bad = wswarm(repo.path, "status", "--watch", "--json")
    assert bad.returncode == 2 and bad.stderr.startswith("wswarm: --watch follows one run"), bad.stderr


def test_logs_follow_prints_new_output_and_new_attempts(repo: Repo, agent_script: Any, tmp_path: Path) -> None:
    # Declared files that do not overlap: attempt 2 starts while `other` still runs.
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("flaky", files=["flaky.txt"]), task("other", files=["other.txt"])],
                  tmp_path / "go")
    try:
        run.fail("flaky", 1)
        run.wait_event("agent-activity", "flaky")
        follower = popen(repo, "logs", "flaky", "--follow")
        wait_for(lambda: (run.dir / "attempts" / "flaky" / "1" / "agent.log").stat().st_size > 0,
                 what="attempt 1's output")
        run.release("flaky.1")                         # attempt 1 gives up; attempt 2 waits
        wait_for(lambda: any(e["kind"] == "agent-started" and e.get("attempt") == 2 for e in run.events()),
                 what="attempt 2")
        seen = read_until(follower, "==> attempt 2: agent.log <==")
        assert follower.poll() is None                 # the task is not settled: it keeps following
        run.release("flaky")
        out, err = follower.communicate(timeout=30)    # ends when the task merged
        out = seen + out
        assert follower.returncode == 0, err
        assert run.proc.poll() is None                 # while `other` still runs
        code, _, err = run.finish()
        assert code == 0, err
    finally:
        run.stop()
    headers = [line for line in out.splitlines() if line.startswith("==> ")]
    # Attempt 1's agent gave up before any gate; attempt 2's gate verdict follows its log.
    assert headers == ["==> attempt 1: agent.log <==", "==> attempt 2: agent.log <==", "==> attempt 2: gate <=="]
    verdict = out.split("==> attempt 2: gate <==\n")[1]
    assert verdict.startswith("gate passed: conflict-markers ✓, secrets ✓") and verdict.count("\n") == 1
    one, two = out.split("==> attempt 2: agent.log <==\n")
    assert "flaky: giving up on attempt 1" in one and "flaky: wrote flaky.txt" in two
    assert "flaky: reading the task" in two and "other" not in out
    # Without --follow: the same logs, once.
    plain = wswarm(repo.path, "logs", "flaky")
    assert plain.returncode == 0 and plain.stdout == out


def test_command_agent_output_becomes_throttled_activity(repo: Repo, agent_script: Any, tmp_path: Path) -> None:
    """Colour codes and progress redraws are cleaned, a burst is reported as its last line, and the
    agent never waits for the reporting."""
    noisy = agent_script(r'''
        for i in range(400):
            print(f"\x1b[32mline {i}\x1b[0m", flush=True)
            if i % 100 == 0:
                time.sleep(0.35)
        sys.stdout.write("progress 10%\rprogress 55%\rprogress 100%\n")
        sys.stdout.flush()
        time.sleep(0.4)
        Path("out.txt").write_text("done\n")
        print("all done", flush=True)
    ''')
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([task("noisy")]))
    started = time.monotonic()
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", noisy)
    assert res.returncode == 0, res.stderr
    seconds = time.monotonic() - started
    said = [e for e in events(repo) if e["kind"] == "agent-activity"]
    assert all(e["task"] == "noisy" and e["attempt"] == 1 and e["agent"] == "command" for e in said)
    texts = [e["text"] for e in said]
    assert all("\x1b" not in t and "\r" not in t for t in texts)
    assert "progress 100%" in texts and texts[-1] == "all done"
    assert len(texts) <= seconds / 0.3 + 2            # 400 lines, a handful of events
    assert len(texts) == len(set(texts))               # an unchanged line is not repeated


def test_a_reader_never_writes_to_the_event_log(repo: Repo, agent_script: Any, tmp_path: Path) -> None:
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("solo")], tmp_path / "go")
    assert run.finish()[0] == 0
    log = run.dir / "events.jsonl"
    with open(log, "a") as f:
        f.write('{"ts": 1, "kind": "half-writ')     # an event the orchestrator is in the middle of writing
    before = log.read_bytes()
    assert wswarm(repo.path, "status").returncode == 0
    assert log.read_bytes() == before


def test_interrupting_a_run_shows_in_the_watcher(repo: Repo, agent_script: Any, tmp_path: Path) -> None:
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("x")], tmp_path / "go")
    try:
        run.wait_event("agent-started", "x")
        watcher = popen(repo, "status", "--watch")
        seen = read_until(watcher, "agent-started")    # it has attached before the run stops
        os.kill(run.proc.pid, signal.SIGINT)
        assert run.proc.wait(timeout=30) == 130
        out, err = watcher.communicate(timeout=30)
        out = seen + out
    finally:
        run.stop()
    assert watcher.returncode == 0, err
    assert out.splitlines()[-1].split()[1] == "run-interrupted"
