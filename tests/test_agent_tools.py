"""The built-in agent's tools on a real git worktree: what they do, and what they refuse.

Each refusal is checked two ways: the call answers an error (what the model is told), and nothing
outside the worktree was read into that answer or changed.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import IN_CI, Repo, alive
from worktree_swarm.agents.sandbox import Runner
from worktree_swarm.sandbox import available as sandbox_available, untrusted_env
from worktree_swarm.agents.tool_specs import TOOL_SPECS, call_tool
from worktree_swarm.agents.tools import READ_LIMIT, WRITE_LIMIT, Workspace

SECRET = "TOP-SECRET-OUTSIDE-0451"


@pytest.fixture
def wt(repo: Repo, tmp_path: Path) -> Path:
    """A linked worktree of `repo` (its .git is a file), plus an `outside` folder beside it holding a
    secret and a sentinel, and links from inside the worktree to both."""
    path = tmp_path / "wt"
    repo.git("worktree", "add", "-q", "-b", "task", str(path))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    (outside / "sentinel.txt").write_text("unchanged\n")
    (path / "out-file").symlink_to(outside / "secret.txt")
    (path / "out-dir").symlink_to(outside, target_is_directory=True)
    (path / "in-link").symlink_to("app/core.py")
    return path


def call(root: Path, name: str, runner: Runner | None = None, **args: Any) -> tuple[str, bool]:
    ws = Workspace(root)
    return call_tool(name, args, workspace=ws,
                     runner=runner or Runner(ws, root.parent / "scratch", sandbox=False))


def outside_untouched(tmp_path: Path) -> None:
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret.txt", "sentinel.txt"]
    assert (tmp_path / "outside" / "sentinel.txt").read_text() == "unchanged\n"
    assert (tmp_path / "outside" / "secret.txt").read_text() == SECRET + "\n"


ESCAPES = [
    ("read", {"path": "../outside/secret.txt"}, "outside the worktree"),
    ("read", {"path": "app/../../outside/secret.txt"}, "outside the worktree"),
    ("read", {"path": "/etc/passwd"}, "outside the worktree"),
    ("read", {"path": "out-file"}, "symbolic link"),
    ("read", {"path": "out-dir/secret.txt"}, "symbolic link"),
    ("read", {"path": ".git"}, ".git"),
    ("list", {"path": ".."}, "outside the worktree"),
    ("list", {"path": "out-dir"}, "symbolic link"),
    ("search", {"pattern": "SECRET", "path": "../outside"}, "outside the worktree"),
    ("search", {"pattern": "SECRET", "path": "out-dir"}, "symbolic link"),
    ("write", {"path": "../outside/sentinel.txt", "content": "pwned"}, "outside the worktree"),
    ("write", {"path": "out-file", "content": "pwned"}, "symbolic link"),
    ("write", {"path": "out-dir/new.txt", "content": "pwned"}, "symbolic link"),
    ("write", {"path": "out-dir/deeper/new.txt", "content": "pwned"}, "symbolic link"),
    ("write", {"path": ".git", "content": "gitdir: /tmp"}, ".git"),
    ("edit", {"path": "out-file", "old_string": "TOP", "new_string": "pwned"}, "symbolic link"),
    ("edit", {"path": "/etc/hostname", "old_string": "a", "new_string": "b"}, "outside the worktree"),
]


@pytest.mark.parametrize(("tool", "args", "reason"), ESCAPES, ids=[f"{t}-{a['path']}" for t, a, _ in ESCAPES])
def test_paths_leading_out_of_the_worktree_are_refused(wt: Path, tmp_path: Path, tool: str,
                                                       args: dict[str, Any], reason: str) -> None:
    text, is_error = call(wt, tool, **args)
    assert is_error and reason in text
    assert SECRET not in text
    outside_untouched(tmp_path)


def test_paths_inside_are_fine_however_they_are_spelled(wt: Path) -> None:
    assert call(wt, "read", path="app/../README.md") == ("     1\t# sample", False)
    assert call(wt, "read", path=str(wt / "README.md")) == ("     1\t# sample", False)
    assert call(wt, "read", path="in-link") == ("     1\tVALUE = 1", False)   # a link that stays inside
    assert call(wt, "write", path="./app/new.py", content="X = 2\n")[1] is False
    assert (wt / "app" / "new.py").read_text() == "X = 2\n"
    assert call(wt, "write", path=".gitignore", content="*.log\n")[1] is False    # only .git itself is off limits


def test_a_linked_worktree_points_at_its_git_dir_which_is_never_touched(wt: Path, repo: Repo) -> None:
    assert (wt / ".git").is_file()
    for tool, args in [("read", {"path": ".git/config"}), ("write", {"path": ".git/hooks/x", "content": ""}),
                       ("list", {"path": ".git"})]:
        text, is_error = call(wt, tool, **args)
        assert is_error and ".git" in text
    listing, _ = call(wt, "list", recursive=True)
    assert ".git" not in listing.split()
    assert repo.git("-C", str(wt), "status", "--porcelain") == "?? in-link\n?? out-dir\n?? out-file".strip()


def test_write_creates_directories_keeps_the_mode_and_never_writes_through_a_hard_link(
        wt: Path, tmp_path: Path) -> None:
    script = wt / "run.sh"
    script.write_text("old\n")
    script.chmod(0o755)
    assert call(wt, "write", path="run.sh", content="new\n") == ("overwrote run.sh (4 bytes)", False)
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert call(wt, "write", path="a/b/c.txt", content="deep\n") == ("created a/b/c.txt (5 bytes)", False)
    # A hard link is not visible as a link: the write replaces the worktree's name, not the inode.
    os.link(tmp_path / "outside" / "sentinel.txt", wt / "hard.txt")
    assert call(wt, "write", path="hard.txt", content="pwned\n")[1] is False
    assert (wt / "hard.txt").read_text() == "pwned\n"
    outside_untouched(tmp_path)


def test_edit_replaces_exactly_one_occurrence_unless_told_otherwise(wt: Path) -> None:
    (wt / "m.py").write_text("a = 1\nb = 1\nc = 2\n")
    assert call(wt, "edit", path="m.py", old_string="c = 2", new_string="c = 3") == \
        ("replaced 1 occurrence in m.py", False)
    text, is_error = call(wt, "edit", path="m.py", old_string="= 1", new_string="= 9")
    assert is_error and "occurs 2 times" in text
    text, is_error = call(wt, "edit", path="m.py", old_string="d = 4", new_string="d = 5")
    assert is_error and "does not occur" in text
    text, is_error = call(wt, "edit", path="m.py", old_string="a = 1", new_string="a = 1")
    assert is_error and "the same" in text
    assert (wt / "m.py").read_text() == "a = 1\nb = 1\nc = 3\n"        # refusals changed nothing
    assert call(wt, "edit", path="m.py", old_string="= 1", new_string="= 9", replace_all=True) == \
        ("replaced 2 occurrences in m.py", False)
    assert (wt / "m.py").read_text() == "a = 9\nb = 9\nc = 3\n"
    text, is_error = call(wt, "edit", path="missing.py", old_string="x", new_string="y")
    assert is_error and "does not exist" in text


def test_read_numbers_lines_reads_ranges_and_refuses_binaries(wt: Path) -> None:
    (wt / "n.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    assert call(wt, "read", path="n.txt", offset=3, limit=2) == \
        ("     3\tline 3\n     4\tline 4\n[the file goes on: read on with offset=5]", False)
    assert call(wt, "read", path="n.txt", offset=9) == ("     9\tline 9\n    10\tline 10", False)
    (wt / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)
    text, is_error = call(wt, "read", path="blob.bin")
    assert is_error and "binary" in text
    text, is_error = call(wt, "read", path="app")
    assert is_error and "not a file" in text
    (wt / "long.txt").write_text("".join(f"{i}\n" for i in range(1, 3001)))
    text, _ = call(wt, "read", path="long.txt")
    assert text.splitlines()[-2:] == ["  2000\t2000", "[the file goes on: read on with offset=2001]"]
    text, is_error = call(wt, "write", path="bad.txt", content="\ud800")
    assert is_error and "surrogate" in text


def test_very_large_files_are_refused_whole_but_readable_in_parts(wt: Path) -> None:
    big = wt / "big.log"
    big.write_text("".join(f"{i:07d} some log text\n" for i in range(READ_LIMIT // 10)))
    text, is_error = call(wt, "read", path="big.log")
    assert is_error and "over the 256 KB read limit" in text and "offset" in text
    assert call(wt, "read", path="big.log", offset=20_000, limit=1) == \
        (" 20000\t0019999 some log text\n[the file goes on: read on with offset=20001]", False)
    text, is_error = call(wt, "write", path="huge.txt", content="x" * (WRITE_LIMIT + 1))
    assert is_error and "write limit" in text and not (wt / "huge.txt").exists()
    text, is_error = call(wt, "edit", path="big.log", old_string="0000001 some", new_string="x" * WRITE_LIMIT)
    assert is_error and "limit" in text


def test_list_and_search(wt: Path, tmp_path: Path) -> None:
    (wt / "app" / "util.py").write_text("def helper():\n    return VALUE\n")
    (wt / "app" / "data.bin").write_bytes(b"VALUE\x00")
    listing, _ = call(wt, "list", path="app")
    assert listing.splitlines() == ["__init__.py  (0 bytes)", "core.py  (10 bytes)", "data.bin  (6 bytes)",
                                    "util.py  (31 bytes)"]
    assert "out-dir@ -> " in call(wt, "list")[0]
    text, is_error = call(wt, "search", pattern=r"VALUE\b")
    # Binaries and links are skipped: the secret behind out-dir and out-file is never searched.
    assert (text, is_error) == ("app/core.py:1: VALUE = 1\napp/util.py:2:     return VALUE", False)
    (tmp_path / "outside" / "secret.txt").write_text(f"VALUE {SECRET}\n")
    assert SECRET not in call(wt, "search", pattern="VALUE|SECRET")[0]
    assert call(wt, "search", pattern="value", glob="util.py", ignore_case=True)[0] == \
        "app/util.py:2:     return VALUE"
    assert call(wt, "search", pattern="nothing-like-this")[0] == "no matches"
    text, is_error = call(wt, "search", pattern="(unclosed")
    assert is_error and "not a valid regular expression" in text


def test_unknown_tools_and_bad_input_are_errors_not_exceptions(wt: Path) -> None:
    assert call(wt, "delete", path="x")[1] is True
    assert call(wt, "read")[1] is True
    assert call(wt, "write", path="x.txt", content=None)[1] is True
    assert call(wt, "read", path="README.md", offset=-1)[1] is True
    assert {spec["name"] for spec in TOOL_SPECS} == {"list", "read", "write", "edit", "search", "run"}


# --- run ------------------------------------------------------------------------------------------

def runner(wt: Path, *, sandbox: bool = False, **kw: Any) -> Runner:
    return Runner(Workspace(wt), wt.parent / "scratch", sandbox=sandbox, **kw)


def test_run_takes_argv_and_no_shell_interprets_it(wt: Path) -> None:
    text, is_error = call(wt, "run", runner(wt), argv=["echo", "$(touch pwned)", "`touch pwned2`", ";", "ls"])
    assert (text, is_error) == ("exit status 0\n$(touch pwned) `touch pwned2` ; ls\n", False)
    assert not (wt / "pwned").exists() and not (wt / "pwned2").exists()
    text, is_error = call(wt, "run", runner(wt), argv="touch pwned")
    assert is_error and "list of strings" in text and not (wt / "pwned").exists()


def test_run_reports_failures_and_missing_programs(wt: Path) -> None:
    text, is_error = call(wt, "run", runner(wt), argv=["python3", "-c", "import sys; print('oops'); sys.exit(3)"])
    assert (text, is_error) == ("exit status 3\noops\n", True)
    text, is_error = call(wt, "run", runner(wt), argv=["no-such-program-here"])
    assert is_error and "not installed" in text


@pytest.mark.parametrize("argv", [["cat", "/etc/passwd"], ["cat", "../outside/secret.txt"],
                                  ["cp", "README.md", "--target-directory=/tmp"], ["cat", "out-file"],
                                  ["../outside/run.sh"]])
def test_run_refuses_arguments_naming_paths_outside(wt: Path, tmp_path: Path, argv: list[str]) -> None:
    text, is_error = call(wt, "run", runner(wt), argv=argv)
    assert is_error and "outside the worktree" in text and SECRET not in text
    outside_untouched(tmp_path)


def test_run_lets_through_words_that_only_look_like_paths(wt: Path) -> None:
    (wt / "tool.sh").write_text("#!/bin/sh\necho tool ran \"$@\"\n")
    (wt / "tool.sh").chmod(0o755)
    assert call(wt, "run", runner(wt), argv=["sed", "-n", "/VALUE/p", "app/core.py"]) == \
        ("exit status 0\nVALUE = 1\n", False)
    assert call(wt, "run", runner(wt), argv=["./tool.sh", "--url=/api/v1", str(wt / "README.md")]) == \
        (f"exit status 0\ntool ran --url=/api/v1 {wt / 'README.md'}\n", False)
    text, is_error = call(wt, "run", runner(wt), argv=["./missing.sh"])
    assert is_error and "does not exist" in text


def test_run_environment_holds_no_secret_and_a_home_of_its_own(wt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-" + "k" * 40)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_" + "t" * 36)
    monkeypatch.setenv("PLAIN_SETTING", "kept")
    env = untrusted_env({"WSWARM_PORT": "4567"})
    assert "ANTHROPIC_API_KEY" not in env and "GITHUB_TOKEN" not in env
    assert (env["PLAIN_SETTING"], env["WSWARM_PORT"]) == ("kept", "4567")
    text, _ = call(wt, "run", runner(wt), argv=["env"])
    assert "sk-ant-api03" not in text and "ghp_" not in text
    assert f"HOME={wt.parent / 'scratch' / 'home'}" in text.splitlines()


SANDBOXES = [False, pytest.param(True, marks=pytest.mark.skipif(
    not IN_CI and not sandbox_available(), reason="bubblewrap cannot make a sandbox here (scripts/install-test-tools)"))]


@pytest.mark.parametrize("sandbox", SANDBOXES, ids=["plain", "bwrap"])
def test_run_timeout_kills_the_command_and_its_children(wt: Path, sandbox: bool) -> None:
    pidfile = wt / "child.pid"
    started = time.monotonic()
    text, is_error = call(wt, "run", runner(wt, sandbox=sandbox), timeout=1, argv=[
        "python3", "-c", "import os, subprocess, sys; p = subprocess.Popen(['sleep', '60']); "
        "open('child.pid', 'w').write(str(p.pid)); print('started', flush=True); p.wait()"])
    assert is_error and text.startswith("timed out after 1s") and "started" in text
    assert time.monotonic() - started < 10
    # Inside bwrap the pid is the namespace's: the child is gone with the namespace either way.
    if not sandbox:
        pid = int(pidfile.read_text())
        gone_by = time.monotonic() + 5          # a signal is delivered, not obeyed, by the time kill returns
        while alive(pid) and time.monotonic() < gone_by:
            time.sleep(0.05)
        assert not alive(pid)


def test_run_stops_when_the_attempt_is_cancelled(wt: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    text, is_error = call(wt, "run", runner(wt, cancel=cancel), argv=["sleep", "30"])
    assert (text, is_error) == ("interrupted: the run is stopping", True)


def test_run_output_is_capped_to_head_and_tail(wt: Path) -> None:
    text, is_error = call(wt, "run", runner(wt), argv=["python3", "-c", "print('A' * 100000 + 'END')"])
    assert not is_error and len(text) < 31_000 and text.rstrip().endswith("END") and "bytes cut" in text


@pytest.mark.skipif(not IN_CI and not sandbox_available(), reason="bubblewrap cannot make a sandbox here (scripts/install-test-tools)")
def test_in_the_sandbox_a_command_writes_only_the_worktree(wt: Path, tmp_path: Path) -> None:
    target = tmp_path / "outside" / "sentinel.txt"
    # The path hides inside a script's text, where the argument check cannot see it.
    script = f"open({str(target)!r}, 'w').write('pwned')"
    text, is_error = call(wt, "run", runner(wt, sandbox=True), argv=["python3", "-c", script])
    assert is_error and ("Read-only file system" in text or "No such file" in text)
    text, is_error = call(wt, "run", runner(wt, sandbox=True), argv=["sh", "-c", "echo made > inside.txt"])
    assert not is_error and (wt / "inside.txt").read_text() == "made\n"
    outside_untouched(tmp_path)


@pytest.mark.skipif(not IN_CI and not sandbox_available(), reason="bubblewrap cannot make a sandbox here (scripts/install-test-tools)")
def test_in_the_sandbox_tools_installed_anywhere_still_run(wt: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Found in a clean-clone CI run: with a private /tmp, a project's venv under /tmp vanished.
    tool = tmp_path / "venv" / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho tool ran in \"$PWD\"\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ['PATH']}")      # on PATH, as a venv's tools are
    text, is_error = call(wt, "run", runner(wt, sandbox=True), argv=[str(tool)])
    assert (text, is_error) == (f"exit status 0\ntool ran in {wt}\n", False)


@pytest.mark.skipif(not IN_CI and not sandbox_available(), reason="bubblewrap cannot make a sandbox here (scripts/install-test-tools)")
def test_in_the_sandbox_git_reads_work_and_git_writes_are_refused(wt: Path, repo: Repo) -> None:
    (wt / "README.md").write_text("# changed\n")
    text, is_error = call(wt, "run", runner(wt, sandbox=True), argv=["git", "status", "--short", "README.md"])
    assert (text, is_error) == ("exit status 0\n M README.md\n", False)
    text, is_error = call(wt, "run", runner(wt, sandbox=True), argv=["git", "commit", "-qam", "sneaky"])
    assert is_error and "Read-only file system" in text
    assert repo.git("rev-parse", "task") == repo.git("rev-parse", "main")
    # The worktree's .git file says where its repository is: a command can neither rewrite nor remove it.
    gitfile = (wt / ".git").read_text()
    text, is_error = call(wt, "run", runner(wt, sandbox=True),
                          argv=["sh", "-c", "echo 'gitdir: /elsewhere' > .git || rm -f .git || mv .git g"])
    assert is_error and (wt / ".git").read_text() == gitfile
