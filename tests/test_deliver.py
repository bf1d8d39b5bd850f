"""Delivering a run: the PR body, pushing the integration branch, opening the PR with gh."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from conftest import Repo, git, wswarm, write_plan

AGENT = """
tid = os.environ["WSWARM_TASK_ID"]
Path(tid + ".txt").write_text(tid + "\\n")
"""


def finished_run(repo: Repo, agent_script: object) -> str:
    write_plan(repo.path / "plan.json", [{"id": "one", "description": "write one"},
                                         {"id": "two", "description": "write two", "dependencies": ["one"]}])
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent_script(AGENT))  # type: ignore[operator]
    assert res.returncode == 0, res.stderr
    return str(wswarm(repo.path, "status", "--json").json()["integration_branch"])


def test_push_to_a_bare_remote(repo: Repo, agent_script: object, tmp_path: Path) -> None:
    branch = finished_run(repo, agent_script)
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    repo.git("remote", "add", "origin", str(remote))
    res = wswarm(repo.path, "pr", "--push", "origin")
    assert res.returncode == 0, res.stderr
    assert f"pushed {branch} to origin" in res.stderr
    assert git(remote, "rev-parse", branch) == repo.git("rev-parse", branch)
    assert res.stdout.startswith("# wswarm: plan (2/2 tasks)")


def test_push_to_an_unknown_remote_is_one_clear_line(repo: Repo, agent_script: object) -> None:
    finished_run(repo, agent_script)
    res = wswarm(repo.path, "pr", "--push", "nowhere")
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == "wswarm: there is no git remote named 'nowhere'"
    assert "Traceback" not in res.stderr


def test_open_needs_push(repo: Repo, agent_script: object) -> None:
    finished_run(repo, agent_script)
    res = wswarm(repo.path, "pr", "--open")
    assert res.returncode == 2 and "--open needs --push REMOTE" in res.stderr


def test_open_without_gh_says_so(repo: Repo, agent_script: object, tmp_path: Path) -> None:
    finished_run(repo, agent_script)
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    repo.git("remote", "add", "origin", str(remote))
    # A PATH with git and python but no gh.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git",):
        (bin_dir / tool).symlink_to(next(Path(p) / tool for p in os.environ["PATH"].split(":")
                                         if (Path(p) / tool).exists()))
    res = wswarm(repo.path, "pr", "--push", "origin", "--open", env={"PATH": str(bin_dir)})
    assert res.returncode == 2, res.stderr
    assert "the GitHub CLI `gh` is not installed" in res.stderr


def test_open_calls_gh_with_the_body_file(repo: Repo, agent_script: object, tmp_path: Path) -> None:
    """A fake `gh` (a real script on PATH) records its arguments and the body it was given."""
    branch = finished_run(repo, agent_script)
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    repo.git("remote", "add", "origin", str(remote))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "gh-args"
    gh = bin_dir / "gh"
    gh.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}\n"
                  "while [ $# -gt 0 ]; do [ \"$1\" = --body-file ] && cp \"$2\" " + f"{tmp_path}/body; shift; done\n"
                  "echo https://github.example/pr/1\n")
    gh.chmod(gh.stat().st_mode | stat.S_IEXEC)
    res = wswarm(repo.path, "pr", "--push", "origin", "--open",
                 env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert res.returncode == 0, res.stderr
    assert "https://github.example/pr/1" in res.stderr
    args = record.read_text().splitlines()
    assert args[:2] == ["pr", "create"]
    assert args[args.index("--head") + 1] == branch
    assert args[args.index("--base") + 1] == "main"
    assert args[args.index("--title") + 1] == "wswarm: plan (2/2 tasks)"
    run_dir = next((repo.state_dir / "runs").iterdir())
    body = (tmp_path / "body").read_text()
    assert body.startswith("# wswarm: plan (2/2 tasks)\n") and "| `two` |" in body
    assert res.stdout == body
    assert "based on `main`" in (run_dir / "pr.md").read_text()
