"""Real git in temporary repositories; fake agents are real scripts; no mocks of git or of wswarm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.redis_server import redis_server, redis_session  # noqa: F401  (fixtures)

WSWARM = [sys.executable, "-m", "worktree_swarm"]


@pytest.fixture(autouse=True)
def isolated_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user or system git config leaks in; an identity exists; dates increase as in life."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    (home / ".gitconfig").write_text("[user]\n\tname = Test User\n\temail = test@example.invalid\n"
                                     "[init]\n\tdefaultBranch = main\n")
    for var in ("GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE", "GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):
        monkeypatch.delenv(var, raising=False)


def git(cwd: Path, *args: str, check: bool = True) -> str:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {res.stderr}")
    return res.stdout.strip()


@dataclass
class Repo:
    path: Path

    def git(self, *args: str, check: bool = True) -> str:
        return git(self.path, *args, check=check)

    def write(self, rel: str, text: str) -> Path:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def commit_all(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def show(self, ref: str, path: str) -> str:
        return self.git("show", f"{ref}:{path}")

    def branches(self, pattern: str = "wswarm/*") -> list[str]:
        out = self.git("for-each-ref", "--format=%(refname:short)", f"refs/heads/{pattern}")
        return [line for line in out.splitlines() if line]

    @property
    def state_dir(self) -> Path:
        return self.path / ".git" / "wswarm"


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """A repository with one commit: a README and a tiny Python package."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    r = Repo(path)
    r.write("README.md", "# sample\n")
    r.write("app/__init__.py", "")
    r.write("app/core.py", "VALUE = 1\n")
    r.commit_all("initial")
    return r


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def wswarm(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """Run the real command line in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    res = subprocess.run([*WSWARM, *args], cwd=cwd, capture_output=True, text=True, env=full_env,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(res.returncode, res.stdout, res.stderr)


@pytest.fixture
def agent_script(tmp_path: Path) -> Iterator[Any]:
    """Write a fake agent (a real Python script) and return the command line that runs it."""
    def make(body: str, name: str = "agent.py") -> str:
        path = tmp_path / "agents" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("import json, os, sys, time\nfrom pathlib import Path\n" + textwrap.dedent(body))
        return f"{sys.executable} {path}"
    yield make


@pytest.fixture
def rec_dir(tmp_path: Path) -> Path:
    """A folder outside the repository where agents record what they saw (tests/swarm_run.py)."""
    path = tmp_path / "rec"
    path.mkdir()
    return path


def write_plan(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(tasks, indent=2))
    return path


def task(tid: str, description: str | None = None, **fields: Any) -> dict[str, Any]:
    """A plan's task with every field given: of type general, on no dependencies and no files, and
    described as its id in capitals, unless DESCRIPTION or FIELDS say otherwise."""
    return {"id": tid, "type": "general", "description": tid.upper() if description is None else description,
            "dependencies": [], "files": [], **fields}


def status(repo: Repo, *, allow_errors: bool = False) -> dict[str, Any]:
    """`wswarm status --json` of the latest run; an attempt that ended in an internal error fails
    the test right here, unless ALLOW_ERRORS."""
    res = wswarm(repo.path, "status", "--json")
    assert res.returncode == 0, res.stderr
    data: dict[str, Any] = res.json()
    if not allow_errors:
        errors = [e for e in events(repo, data["run"]) if e["kind"] == "error"]
        assert errors == [], "an attempt ended in an internal error (the worktree-add race, see " \
                             f"test_many_agents_starting_at_once_all_get_a_worktree?): {errors}"
    return data


def run_dir(repo: Repo, run: str | None = None) -> Path:
    """The folder of run RUN, or of the repository's only run."""
    runs = repo.state_dir / "runs"
    if run is not None:
        return runs / run
    # Only folders: a write-test file can come and go beside them.
    [only] = [p for p in runs.iterdir() if p.is_dir()]
    return only


def events(repo: Repo, run: str | None = None, *, after_kill: bool = False) -> list[dict[str, Any]]:
    """The events of run RUN (or of the only run), oldest first. Only whole lines: the orchestrator
    may be writing the last one right now. AFTER_KILL is for a run killed at any moment, maybe
    before it began (then it has no events), and maybe resumed: a line the kill cut short stays
    in the middle of the log, and is passed over."""
    runs = repo.state_dir / "runs"
    if after_kill and not (runs.is_dir() and any(p.is_dir() for p in runs.iterdir())):
        return []       # not begun: the runs folder is made a moment before the run's own
    path = run_dir(repo, run) / "events.jsonl"
    if after_kill and not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    out = []
    for line in text[:text.rfind("\n") + 1].splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if not after_kill:
                raise
    return out


def agent_pid_recorded(repo: Repo, task_id: str, attempt: int = 1) -> bool:
    """Whether the only run has started the attempt's agent and recorded its pid (and its start time,
    the line's end), as `wswarm resume` reads it to stop an agent its orchestrator left behind."""
    runs = repo.state_dir / "runs"
    path = next(runs.glob(f"*/attempts/{task_id}/{attempt}/agent.pid"), None) if runs.is_dir() else None
    return path is not None and path.read_text().endswith("\n")


def wait_for(check: Callable[[], Any], *, timeout: float = 30, what: str = "condition") -> Any:
    """CHECK's first true value, asked every 50 ms; the test fails if none comes within TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie has exited; only its parent has not collected it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:   # reaped in between
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A scripted Messages API on 127.0.0.1 (tests/fakeapi.py); the SDK, the CLI and wswarm run in
    a subprocess all find it through ANTHROPIC_BASE_URL, with a test key."""
    from tests.fakeapi import FakeAnthropic

    with FakeAnthropic() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789abcdef0123456789")
        yield api


def worktree_paths(repo: Repo) -> list[Path]:
    """Every worktree of the repository, the user's checkout first, as git lists them."""
    out = repo.git("worktree", "list", "--porcelain")
    return [Path(line.removeprefix("worktree ")) for line in out.splitlines() if line.startswith("worktree ")]


def idle_slots(repo: Repo, *, kept: Path | None = None) -> list[Path]:
    """The worktrees besides the user's checkout (and KEPT, a failed task's worktree kept for
    inspection), after checking each is a slot back in the pool: under the slots folder, on no
    branch, with nothing left of its last task."""
    besides = {repo.path.resolve(), *([kept.resolve()] if kept is not None else [])}
    others = [p for p in worktree_paths(repo) if p.resolve() not in besides]
    for path in others:
        assert path.parent.resolve() == (repo.state_dir / "slots").resolve(), f"not a slot: {path}"
        assert git(path, "symbolic-ref", "-q", "HEAD", check=False) == "", f"slot on a branch: {path}"
        assert git(path, "status", "--porcelain", "--untracked-files=all") == "", f"slot not clean: {path}"
    return others


def assert_cleans_up(repo: Repo) -> None:
    """After a run: `clean` leaves only idle slots, and `clean --slots` leaves only the user's checkout."""
    res = wswarm(repo.path, "clean")
    assert res.returncode == 0, res.stderr
    idle_slots(repo)
    res = wswarm(repo.path, "clean", "--slots")
    assert res.returncode == 0, res.stderr
    assert len(repo.git("worktree", "list").splitlines()) == 1


def unavailable(reason: str) -> NoReturn:
    """A tool a test drives is missing. Outside CI that is a skip saying how to get it; in CI, where
    scripts/install-test-tools installs every such tool, it is a failure, never a silent skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must have it: scripts/install-test-tools installs it)", pytrace=False)
    pytest.skip(reason)


# For skipif markers: in CI the test runs anyway, and fails if its tool is missing.
IN_CI = bool(os.environ.get("CI"))
