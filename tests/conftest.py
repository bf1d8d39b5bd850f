"""Real git in temporary repositories; fake agents are real scripts; no mocks of git or of wswarm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
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


def write_plan(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(tasks, indent=2))
    return path


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie has exited; only its parent has not collected it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A scripted Messages API on 127.0.0.1 (tests/fakeapi.py); the SDK, the CLI and wswarm run in
    a subprocess all find it through ANTHROPIC_BASE_URL, with a test key."""
    from tests.fakeapi import FakeAnthropic

    with FakeAnthropic() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789abcdef0123456789")
        yield api


def idle_slots(repo: Repo) -> list[Path]:
    """The worktrees besides the user's checkout, after checking each is a slot back in the pool:
    under the slots folder, on no branch, with nothing left of its last task."""
    out = repo.git("worktree", "list", "--porcelain")
    paths = [Path(line.removeprefix("worktree ")) for line in out.splitlines() if line.startswith("worktree ")]
    others = [p for p in paths if p.resolve() != repo.path.resolve()]
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
