"""The pre-merge-commit hook with real `git merge`: installed where git looks, chained with an existing
hook, refusing a bad merge with the gate's report, and uninstalled without touching anyone else's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Repo, wswarm
from worktree_swarm.commands import hook as hooks

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<" * 7 + " HEAD\n"      # built at run time: this file holds no conflict marker line
FOREIGN = "#!/bin/sh\necho \"legacy ran in $(pwd)\" >> \"$LEGACY_LOG\"\nexit \"${LEGACY_EXIT:-0}\"\n"


def hook_path(repo: Repo) -> Path:
    return repo.path / ".git" / "hooks" / "pre-merge-commit"


def merge(cwd: Path, branch: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A real `git merge` that makes a merge commit (never a fast-forward), hooks and all."""
    return subprocess.run(["git", "merge", "--no-ff", "--no-edit", branch], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


def diverge(cwd: Path, branch: str, rel: str, text: str) -> None:
    """BRANCH gets one commit writing REL; the current branch gets one of its own."""
    here = _git(cwd, "rev-parse", "--abbrev-ref", "HEAD")
    _git(cwd, "checkout", "-q", "-b", branch)
    (cwd / rel).parent.mkdir(parents=True, exist_ok=True)
    (cwd / rel).write_text(text)
    _git(cwd, "add", "-A")
    _git(cwd, "commit", "-q", "-m", f"{branch} writes {rel}")
    _git(cwd, "checkout", "-q", here)
    (cwd / f"{here}-{branch}.txt").write_text("meanwhile\n")
    _git(cwd, "add", "-A")
    _git(cwd, "commit", "-q", "-m", f"{here} moves on")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def merges(cwd: Path) -> int:
    return int(_git(cwd, "rev-list", "--count", "--merges", "HEAD"))


def install(cwd: Path) -> str:
    res = wswarm(cwd, "hook", "install")
    assert res.returncode == 0, res.stderr
    return res.stderr


def test_a_bad_merge_is_refused_with_the_report_and_no_merge_commit(repo: Repo) -> None:
    install(repo.path)
    diverge(repo.path, "bad", "app/core.py", "VALUE = 1\n" + MARKER)
    head = repo.git("rev-parse", "HEAD")

    res = merge(repo.path, "bad")

    assert res.returncode != 0
    assert "wswarm gate: the index against HEAD (" in res.stderr
    assert "gate FAILED: conflict-markers ✗" in res.stderr
    assert "app/core.py:2: merge conflict marker" in res.stderr
    assert "Not committing merge" in res.stderr
    assert repo.git("rev-parse", "HEAD") == head and merges(repo.path) == 0


def test_a_failing_configured_check_refuses_the_merge(repo: Repo) -> None:
    repo.write("wswarm.toml", '[[gate.checks]]\nname = "value-is-one"\nkind = "tests"\n'
                              'run = "grep -q \'VALUE = 1\' app/core.py || { echo VALUE changed; exit 1; }"\n')
    repo.commit_all("configure the gate")
    install(repo.path)
    diverge(repo.path, "breaks", "app/core.py", "VALUE = 2\n")

    res = merge(repo.path, "breaks")

    assert res.returncode != 0
    assert "fail     value-is-one" in res.stderr and "VALUE changed" in res.stderr
    assert "conflict-markers ✓" in res.stderr
    assert merges(repo.path) == 0


def test_a_good_merge_passes_and_commits(repo: Repo) -> None:
    repo.write("wswarm.toml", '[[gate.checks]]\nname = "tests"\nkind = "tests"\nrun = "test -f app/core.py"\n')
    repo.commit_all("configure the gate")
    install(repo.path)
    diverge(repo.path, "good", "app/extra.py", "X = 1\n")

    res = merge(repo.path, "good")

    assert res.returncode == 0, res.stderr
    assert "gate passed" in res.stderr
    assert merges(repo.path) == 1
    assert len(repo.git("rev-list", "--parents", "-n", "1", "HEAD").split()) == 3


def test_an_existing_hook_runs_first_blocks_on_failure_and_is_restored(repo: Repo, tmp_path: Path) -> None:
    log = tmp_path / "legacy.log"
    hook_path(repo).write_text(FOREIGN)
    hook_path(repo).chmod(0o755)

    said = install(repo.path)

    legacy = hook_path(repo).with_name("pre-merge-commit.legacy")
    assert legacy.read_text() == FOREIGN and os.access(legacy, os.X_OK)
    assert f"kept as {legacy}" in said
    diverge(repo.path, "good", "app/extra.py", "X = 1\n")
    env = {"LEGACY_LOG": str(log)}

    refused = merge(repo.path, "good", env={**env, "LEGACY_EXIT": "3"})
    assert refused.returncode != 0 and merges(repo.path) == 0
    assert "wswarm gate" not in refused.stderr      # the legacy hook's failure stops the chain
    subprocess.run(["git", "merge", "--abort"], cwd=repo.path, check=True)

    passed = merge(repo.path, "good", env=env)
    assert passed.returncode == 0, passed.stderr
    assert "gate passed" in passed.stderr and merges(repo.path) == 1
    assert log.read_text().count("legacy ran in") == 2

    res = wswarm(repo.path, "hook", "uninstall")
    assert res.returncode == 0, res.stderr
    assert "restored your previous hook" in res.stderr
    assert hook_path(repo).read_text() == FOREIGN and os.access(hook_path(repo), os.X_OK)
    assert not legacy.exists()


def test_installing_twice_keeps_the_one_legacy_hook(repo: Repo) -> None:
    hook_path(repo).write_text(FOREIGN)
    hook_path(repo).chmod(0o755)

    install(repo.path)
    first = hook_path(repo).read_text()
    said = install(repo.path)

    assert said.startswith("reinstalled the pre-merge-commit hook")
    assert hook_path(repo).read_text() == first
    assert hook_path(repo).with_name("pre-merge-commit.legacy").read_text() == FOREIGN
    assert hooks.MARKER in first.splitlines()


@pytest.mark.parametrize("relative", [False, True])
def test_core_hooks_path_is_respected(repo: Repo, tmp_path: Path, relative: bool) -> None:
    folder = repo.path / ".githooks" if relative else tmp_path / "shared-hooks"
    repo.git("config", "core.hooksPath", ".githooks" if relative else str(folder))

    said = install(repo.path)

    assert (folder / "pre-merge-commit").is_file()
    assert not hook_path(repo).exists()
    assert "core.hooksPath is set" in said and str(folder / "pre-merge-commit") in said
    assert ("relative core.hooksPath" in said) is relative
    diverge(repo.path, "bad", "notes.txt", MARKER)
    res = merge(repo.path, "bad")
    assert res.returncode != 0 and "gate FAILED" in res.stderr
    subprocess.run(["git", "merge", "--abort"], cwd=repo.path, check=True)

    assert wswarm(repo.path, "hook", "uninstall").returncode == 0
    assert not (folder / "pre-merge-commit").exists()


def test_the_hook_works_from_a_linked_worktree(repo: Repo, tmp_path: Path) -> None:
    linked = tmp_path / "linked"
    repo.git("worktree", "add", "-q", "-b", "side", str(linked))

    said = install(linked)                       # from the linked worktree: into the common dir

    assert str(hook_path(repo)) in said
    diverge(linked, "bad", "app/core.py", "VALUE = 1\n" + MARKER)
    refused = merge(linked, "bad")
    assert refused.returncode != 0
    assert "app/core.py:2: merge conflict marker" in refused.stderr
    assert merges(linked) == 0
    subprocess.run(["git", "merge", "--abort"], cwd=linked, check=True)

    diverge(linked, "good", "app/extra.py", "X = 1\n")
    passed = merge(linked, "good")
    assert passed.returncode == 0, passed.stderr
    assert merges(linked) == 1
    assert merges(repo.path) == 0                # the main checkout's branch did not move


def test_uninstall_leaves_a_foreign_hook_alone(repo: Repo) -> None:
    hook_path(repo).write_text(FOREIGN)

    res = wswarm(repo.path, "hook", "uninstall")

    assert res.returncode == 0
    assert "is not wswarm's hook" in res.stderr and "left it alone" in res.stderr
    assert hook_path(repo).read_text() == FOREIGN


def test_uninstall_with_nothing_installed_says_so(repo: Repo) -> None:
    res = wswarm(repo.path, "hook", "uninstall")

    assert res.returncode == 0
    assert "no pre-merge-commit hook is installed" in res.stderr


def test_pre_commit_s_own_hook_is_not_chained(repo: Repo) -> None:
    theirs = "#!/usr/bin/env bash\n# File generated by pre-commit: https://pre-commit.com\nexit 0\n"
    hook_path(repo).write_text(theirs)

    res = wswarm(repo.path, "hook", "install")

    assert res.returncode == 2
    assert res.stderr.splitlines()[0].startswith("wswarm: ") and "pre-commit's hook" in res.stderr
    assert hook_path(repo).read_text() == theirs
    assert not hook_path(repo).with_name("pre-merge-commit.legacy").exists()


def _bin_with(tmp_path: Path, **scripts: str) -> str:
    """A PATH holding git, dirname and the given scripts, and nothing else."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("git", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (folder / tool).symlink_to(found)
    for name, body in scripts.items():
        (folder / name).write_text(body)
        (folder / name).chmod(0o755)
    return str(folder)


def test_the_recorded_python_is_quoted(repo: Repo, tmp_path: Path) -> None:
    odd = tmp_path / "it's a dir" / "python"
    odd.parent.mkdir()
    odd.write_text(f'#!/bin/sh\necho "recorded python ran" >&2\nexec "{sys.executable}" "$@"\n')
    odd.chmod(0o755)
    hooks.install(cwd=repo.path, python=str(odd))
    diverge(repo.path, "bad", "notes.txt", MARKER)

    res = merge(repo.path, "bad", env={"PATH": _bin_with(tmp_path)})

    assert res.returncode != 0
    assert "recorded python ran" in res.stderr and "gate FAILED" in res.stderr


def test_the_hook_falls_back_to_wswarm_on_path(repo: Repo, tmp_path: Path) -> None:
    hooks.install(cwd=repo.path, python=str(tmp_path / "gone" / "python"))
    diverge(repo.path, "bad", "notes.txt", MARKER)
    path = _bin_with(tmp_path, wswarm=f'#!/bin/sh\necho "wswarm from PATH" >&2\n'
                                      f'exec "{sys.executable}" -m worktree_swarm "$@"\n')

    res = merge(repo.path, "bad", env={"PATH": path})

    assert res.returncode != 0
    assert "wswarm from PATH" in res.stderr and "gate FAILED" in res.stderr


def test_a_hook_that_cannot_find_wswarm_refuses_the_merge_and_says_why(repo: Repo, tmp_path: Path) -> None:
    hooks.install(cwd=repo.path, python=str(tmp_path / "gone" / "python"))
    diverge(repo.path, "good", "app/extra.py", "X = 1\n")

    res = merge(repo.path, "good", env={"PATH": _bin_with(tmp_path)})

    assert res.returncode != 0 and merges(repo.path) == 0
    assert "the pre-merge-commit hook cannot find wswarm" in res.stderr
    assert "--no-verify" in res.stderr


def test_the_shipped_template_is_the_one_in_hooks() -> None:
    top = (ROOT / "hooks" / "pre-merge-commit").read_bytes()

    assert (ROOT / "worktree_swarm" / "resources" / "pre-merge-commit").read_bytes() == top
    assert hooks.template().encode() == top
    assert os.access(ROOT / "hooks" / "pre-merge-commit", os.X_OK)
    assert subprocess.run(["sh", "-n", str(ROOT / "hooks" / "pre-merge-commit")]).returncode == 0


def test_pre_commit_hooks_yaml_declares_the_gate() -> None:
    text = (ROOT / ".pre-commit-hooks.yaml").read_text()
    entry = {key.strip(" -"): value.strip() for key, _, value in
             (line.partition(":") for line in text.splitlines() if line.strip() and not line.startswith("#"))}

    assert entry["id"] == "wswarm-gate"
    assert entry["entry"] == "wswarm gate --staged"
    assert entry["language"] == "python"
    assert entry["pass_filenames"] == "false" and entry["always_run"] == "true"
    assert entry["stages"] == "[pre-merge-commit]"
    assert entry["name"]
