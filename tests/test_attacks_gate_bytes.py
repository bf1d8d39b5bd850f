"""Attacks on what the gate judges and on the git wswarm itself runs in an agent's worktree: files the
gate looks up, submodules a snapshot's `git add` would enter, the bytes a commit holds against the
bytes the checks ran on, the agent's own index and the slot's git files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import Repo, events, git, task, wswarm, write_plan
from tests.fakeapi import FakeAnthropic, text, tool_use
from test_sandbox_attacks import configure_builtin, needs_bwrap
from test_attacks_today import DEEP, REDIRECT_COMMONDIR
from worktree_swarm.git import residue
from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.swarm.forecast import snapshot

# -- bytes the gate judged, bytes that merge ----------------------------------------------------------

CORE = 'A = "$Id$"\nB = "$Id: judged $"\nassert A != B, "only a checkout of the commit runs this"\n'


@needs_bwrap
def test_the_gate_judges_the_bytes_a_checkout_of_the_commit_holds(repo: Repo, tmp_path: Path,
                                                                  fake_api: FakeAnthropic) -> None:
    """The confined agent writes `.gitattributes` (`*.py ident`) and a module whose `$Id: … $` git's
    add collapses: the bytes it left pass the check, those of any checkout of the commit fail it.
    Defended by AttemptRunner._as_checked_out, which rewrites what the agent wrote from the commit
    before the gate (and so before its verdict is cached by the commit's tree)."""
    configure_builtin(repo, textwrap.dedent(f"""
        [[gate.checks]]
        name = "tests"
        run = "{sys.executable} app/core.py"
    """))
    fake_api.on("change the app", tool_use("write", {"path": ".gitattributes", "content": "*.py ident\n"}))
    fake_api.on(".gitattributes (", tool_use("write", {"path": "app/core.py", "content": CORE}))
    fake_api.on("app/core.py (", text("Done."))
    plan = write_plan(tmp_path / "plan.json", [task("t", "change the app")])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--max-attempts", "1")
    assert res.returncode == 1, res.stderr
    [attempt] = [b for b in repo.git("for-each-ref", "--format=%(refname)", "refs/heads/wswarm").split()
                 if "/tasks/" in b]
    checkout = tmp_path / "checkout"
    repo.git("worktree", "add", "-q", "--detach", str(checkout), attempt)
    ran = subprocess.run([sys.executable, "app/core.py"], cwd=checkout, capture_output=True, text=True)
    assert ran.returncode != 0                       # a checkout of what the agent committed fails …
    assert [e for e in events(repo) if e["kind"] == "gate-failed"]     # … and so did the gate



# A configured check that judges the worktree's app/core.py.
NO_BAD = textwrap.dedent("""
    [[gate.checks]]
    name = "no-bad"
    kind = "lint"
    run = "if grep -n BAD app/core.py; then exit 1; fi"
""")


def start(repo: Repo, tmp_path: Path, cmd: str, toml: str = NO_BAD, env: dict[str, str] | None = None) -> Any:
    repo.write("wswarm.toml", toml)
    repo.commit_all("configure the gate")
    plan = write_plan(tmp_path / "plan.json", [task("t", "change the app")])
    return wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", cmd, env=env)


def merged_core(repo: Repo) -> str:
    [branch] = [b for b in repo.git("for-each-ref", "--format=%(refname)", "refs/heads/wswarm").split()
                if b.endswith("/integration")]
    return repo.show(branch, "app/core.py")



# -- the agent's index and its worktree's git files (agents that run as the user) ---------------------

@pytest.mark.parametrize("flag", ["--assume-unchanged", "--skip-worktree"])
def test_a_staged_blob_hidden_by_an_index_flag_is_not_what_merges(repo: Repo, tmp_path: Path, agent_script: Any,
                                                                  flag: str) -> None:
    # `git add -A` passes over a flagged entry: the staged BAD blob would be committed, the file the
    # gate judged would not. Defended by the index wswarm saved before the agent (save_index/restore_index).
    cmd = agent_script(f"""
        import subprocess
        Path("app/core.py").write_text("VALUE = 'BAD'\\n")
        subprocess.run(["git", "add", "app/core.py"], check=True)
        Path("app/core.py").write_text("VALUE = 2\\n")
        subprocess.run(["git", "update-index", "{flag}", "app/core.py"], check=True)
    """)
    start(repo, tmp_path, cmd)
    assert merged_core(repo) == "VALUE = 2"          # what the gate judged is what merged


def test_a_forged_index_entry_is_not_what_merges(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    # No flag at all: the entry's stat data is the worktree file's, its blob another one. Defended
    # by the index wswarm saved before the agent and puts back before its add (save_index/restore_index).
    cmd = agent_script("""
        import hashlib, subprocess
        def git(*a, inp=None):
            return subprocess.run(["git", *a], input=inp, capture_output=True, text=True, check=True).stdout.strip()
        p = Path("app/core.py")
        p.write_text("VALUE = 'OK!'\\n")
        old = time.time() - 3600
        os.utime(p, (old, old))          # older than the index: not racily clean, never re-hashed
        git("add", "app/core.py")
        good = git("hash-object", str(p))
        bad = git("hash-object", "-w", "--stdin", inp="VALUE = 'BAD'\\n")
        index = Path(git("rev-parse", "--git-path", "index"))
        body = index.read_bytes()[:-20].replace(bytes.fromhex(good), bytes.fromhex(bad))
        index.write_bytes(body + hashlib.sha1(body).digest())
    """)
    start(repo, tmp_path, cmd)
    assert merged_core(repo) == "VALUE = 'OK!'"


def test_a_filter_in_the_worktrees_own_config_never_runs_and_fails_the_attempt(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    # Users of sparse checkout have extensions.worktreeConfig set; the slot's config.worktree is then
    # read by wswarm's `git add`. Defended by slot_files.undo_steering, which fails the attempt.
    repo.git("config", "extensions.worktreeConfig", "true")
    attrs = tmp_path / "attrs"
    attrs.write_text("*.py filter=swap\n")
    cmd = agent_script(f"""
        import subprocess
        Path("app/core.py").write_text("VALUE = 'GOOD'\\n")
        cfg = subprocess.run(["git", "rev-parse", "--git-path", "config.worktree"], capture_output=True, text=True)
        Path(cfg.stdout.strip()).write_text("[core]\\n\\tattributesFile = {attrs}\\n"
                                            "[filter \\"swap\\"]\\n\\tclean = sed s/GOOD/BAD/\\n")
    """)
    res = start(repo, tmp_path, cmd)
    assert res.returncode == 1 and "BAD" not in merged_core(repo)
    [first, *_] = [e["reason"] for e in events(repo) if e["kind"] == "agent-failed"]
    assert first == "the agent changed its worktree's git files (config.worktree)"


def test_a_commondir_pointed_elsewhere_during_the_attempt_fails_it_and_runs_nothing(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    # The slot's commondir pointed at a folder of the agent's: its filter would run in wswarm's own
    # `git add`. Defended by slot_files.undo_steering, before any git command in the worktree.
    evil = tmp_path / "evil"
    res = start(repo, tmp_path, agent_script(REDIRECT_COMMONDIR), env={"EVIL": str(evil)})
    assert res.returncode == 1, res.stderr
    assert not list(evil.glob("ran-*")), "wswarm's own git ran a filter the agent planted"
    [first, *_] = [e["reason"] for e in events(repo) if e["kind"] == "agent-failed"]
    assert first == "the agent changed its worktree's git files (commondir)"



def test_what_the_agent_committed_itself_stays_with_wswarms_index(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    # The index put back is of the start: the agent's own commits come into it, a file it force-added
    # past .gitignore included, and what it left uncommitted on top.
    repo.write(".gitignore", "dist/\n")
    cmd = agent_script("""
        import subprocess
        Path("dist").mkdir()
        Path("dist/app.js").write_text("built\\n")
        Path("app/core.py").write_text("VALUE = 2\\n")
        subprocess.run(["git", "add", "-f", "dist/app.js", "app/core.py"], check=True)
        subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qm", "mine"], check=True)
        Path("app/more.py").write_text("MORE = 1\\n")
    """)
    res = start(repo, tmp_path, cmd)
    assert res.returncode == 0, res.stderr
    [branch] = [b for b in repo.git("for-each-ref", "--format=%(refname)", "refs/heads/wswarm").split()
                if b.endswith("/integration")]
    assert repo.show(branch, "dist/app.js") == "built" and repo.show(branch, "app/more.py") == "MORE = 1"
    assert merged_core(repo) == "VALUE = 2"


# -- a path too long for its full spelling -------------------------------------------------------------

def test_a_path_too_long_for_its_full_spelling_stops_nothing(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    """A file whose path from the worktree is under PATH_MAX and whose full path is over it (git
    commits it): the gate's lookup of the changed files once raised, and the run stopped (exit 3).
    Defended by gate.runner._existing, which looks each path up from the worktree."""
    cmd = agent_script(DEEP + """
fd = deep_folder()
f = os.open("x.txt", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
os.write(f, b"x")
Path("app/core.py").write_text("VALUE = 2\\n")
""")
    plan = write_plan(tmp_path / "plan.json", [task("t", "change the app")])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", cmd)
    assert res.returncode in (0, 1) and "internal error" not in res.stderr, res.stderr[-300:]


# -- a submodule's git dir swapped in under a snapshot ------------------------------------------------

TOGGLER = r'''
import os, random, sys, time
from pathlib import Path
wt, mark_dir, secs = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + secs
while time.monotonic() < end and not list(mark_dir.glob("mark-*")):
    os.utime(wt / "lib/s.txt")
    os.rename(wt / "lib/.git", wt / "lib/.hide")
    time.sleep(random.random() * 0.02)
    os.rename(wt / "lib/.hide", wt / "lib/.git")
    time.sleep(random.random() * 0.02)
'''

def test_a_snapshot_never_runs_git_in_a_submodule_whose_git_dir_the_agent_swaps_in(repo: Repo, tmp_path: Path) -> None:
    """A confined agent copies the submodule's git dir (readable in the common dir) into its folder,
    adds a filter to its config, and swaps that `.git` in and out so that the walk misses it and the
    snapshot's `git add` meets it: git would run `git status` in the submodule, and the filter as
    the user. Defended by forecast.snapshot, which adds nothing inside a gitlink."""
    sub = tmp_path / "sub"
    sub.mkdir()
    git(sub, "init", "-q", "-b", "main")
    (sub / "s.txt").write_text("s\n")
    git(sub, "add", "-A"); git(sub, "commit", "-qm", "sub")
    repo.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "lib")
    repo.commit_all("add a submodule")
    wt = tmp_path / "wt"
    repo.git("worktree", "add", "-q", "-b", "task", str(wt))
    lib = wt / "lib"
    lib.mkdir(exist_ok=True)
    # What the confined agent can do: the submodule's objects are readable in the common dir.
    shutil.copytree(repo.path / ".git/modules/lib", lib / ".git")
    git(wt, "config", "--file", str(lib / ".git/config"), "--unset", "core.worktree")
    git(lib, "checkout", "-q", "--", ".")
    git(wt, "config", "--file", str(lib / ".git/config"), "filter.ev.clean", f"touch {tmp_path}/mark-$$; cat")
    (lib / ".gitattributes").write_text("* filter=ev\n")
    (lib / "x.txt").write_text("x\n")
    (wt / "app/core.py").write_text("VALUE = 2\n")
    toggler = subprocess.Popen([sys.executable, "-c", TOGGLER, str(wt), str(tmp_path), "4"])
    r = GitRepo.discover(repo.path)
    n = 0
    got = 0
    hidden = 0
    while toggler.poll() is None and not list(tmp_path.glob("mark-*")):
        if not residue.scan(wt, common_dir=r.common_dir).nested:
            hidden += 1
        s = snapshot(r, wt)
        got += s is not None
        n += 1
    toggler.wait()
    assert n > 20 and got > 0 and hidden > 0        # the race was run, and the walk was fooled at times
    assert not list(tmp_path.glob("mark-*")), "a filter planted in the worktree ran outside the sandbox"
