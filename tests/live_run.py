"""A run that stays live until the test says so: agents that wait for a go-file per task.

Used by the live-view tests (test_live, test_watch, test_dashboard): the real CLI in a subprocess,
real git, real agent processes; only the moment each agent finishes is chosen by the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any


from conftest import WSWARM, Repo, events, unavailable, wait_for, write_plan

ROOT = Path(__file__).resolve().parent.parent

# The agent prints as it works (its output becomes activity), waits for GO_DIR/<task> (or
# GO_DIR/<task>.<attempt>, or GO_DIR/all), fails when GO_DIR/fail-<task>-<attempt> exists, else writes <task>.txt (and SHARED, when named, to make two tasks conflict), and gives
# up after a minute so a broken test cannot hang.
WAITING_AGENT = r'''
tid = os.environ["WSWARM_TASK_ID"]
safe = tid.replace("/", "_")
go = Path(os.environ["GO_DIR"])
print(f"{tid}: reading the task", flush=True)
deadline = time.time() + 60
i = 0
attempt = os.environ["WSWARM_ATTEMPT"]
while not any((go / name).exists() for name in (safe, f"{safe}.{attempt}", "all")):
    if time.time() > deadline:
        sys.exit(1)
    i += 1
    if i % 4 == 0:
        print(f"{tid}: working, step {i // 4}", flush=True)
    time.sleep(0.05)
if (go / f"fail-{safe}-{attempt}").exists():
    print(f"{tid}: giving up on attempt {attempt}", flush=True)
    sys.exit(3)
Path(f"{safe}.txt").write_text(tid + "\n")
if tid in os.environ.get("SHARED", "").split(","):
    Path("shared.txt").write_text(tid + "\n")
print(f"{tid}: wrote {safe}.txt", flush=True)
'''


class LiveRun:
    """`wswarm start` in the background; release(task) lets that task's agent finish."""

    def __init__(self, repo: Repo, agent_cmd: str, tasks: list[dict[str, Any]], go: Path, *,
                 agents: int = 3, shared: str = "", extra: tuple[str, ...] = ()) -> None:
        self.repo = repo
        self.go = go
        go.mkdir(exist_ok=True)
        plan = write_plan(go.parent / "plan.json", tasks)
        self.env = dict(os.environ, GO_DIR=str(go), SHARED=shared)
        self.proc = subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--agents", str(agents),
                                      "--agent-cmd", agent_cmd, *extra],
                                     cwd=repo.path, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.dir: Path = wait_for(self._run_dir, what="the run's folder")

    def _run_dir(self) -> Path | None:
        runs = repo_runs(self.repo)
        return runs[-1] if runs and (runs[-1] / "events.jsonl").exists() else None

    @property
    def id(self) -> str:
        return self.dir.name

    def events(self) -> list[dict[str, Any]]:
        return events(self.repo, self.id)

    def wait_event(self, kind: str, task: str | None = None, *, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: next((e for e in self.events() if e["kind"] == kind
                                      and (task is None or e.get("task") == task)), None),
                        timeout=timeout, what=f"event {kind} {task or ''}")

    def release(self, task: str = "all") -> None:
        (self.go / task.replace("/", "_")).write_text("")

    def fail(self, task: str, attempt: int) -> None:
        (self.go / f"fail-{task.replace('/', '_')}-{attempt}").write_text("")

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        self.release("all")
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def stop(self) -> None:
        """Make sure nothing outlives the test."""
        if self.proc.poll() is None:
            self.release("all")
            try:
                self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


def repo_runs(repo: Repo) -> list[Path]:
    root = repo.state_dir / "runs"
    return sorted(p for p in root.iterdir() if (p / "state.db").exists()) if root.is_dir() else []


def need_tool(path_or_name: str) -> str:
    """The tool's path; installed by scripts/install-test-tools when missing and we are root."""
    found = shutil.which(path_or_name)
    if found is None and os.geteuid() == 0:
        subprocess.run([str(ROOT / "scripts" / "install-test-tools")], check=True)
        found = shutil.which(path_or_name)
    if found is None:
        unavailable(f"{path_or_name} is not installed and this is not root: run scripts/install-test-tools as root")
    return found
