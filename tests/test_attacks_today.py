"""Attacks on what changed lately, run for real: the leftovers commit made with plumbing (`git add`,
`write-tree`, `commit-tree`, compare-and-swap), the one walk of a worktree (`residue.scan`) that
finds nested repositories and decides whether git is asked for untracked files at all, and agents
on the integrator's machine beside workers.

Each test is an attack wswarm defends; the comment above it names the line that defends it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import Repo, events, status, task, wswarm, write_plan
from tests.test_remote_run import Cluster, agent_cmd, cluster, until  # noqa: F401  (cluster is a fixture)
from tests.test_remote_run import events as remote_events
from tests.test_remote_mixed import side_by_side
from worktree_swarm.git import residue


def start(repo: Repo, tmp_path: Path, cmd: str) -> Any:
    plan = write_plan(tmp_path / "plan.json", [task("t", "change the app")])
    return wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", cmd)


def integration(repo: Repo) -> str:
    [branch] = [b for b in repo.git("for-each-ref", "--format=%(refname)", "refs/heads/wswarm").split()
                if b.endswith("/integration")]
    return branch


def tree_paths(repo: Repo, ref: str) -> list[str]:
    return repo.git("ls-tree", "-r", "--name-only", ref).splitlines()


# Builds, below the worktree, folders whose path from the worktree stays under PATH_MAX (git reaches
# them) while their full path passes it: a walk that opens full paths cannot list them.
DEEP = """
PATH_MAX = 4096
def deep_folder():
    root = os.getcwd()
    want = PATH_MAX - len(root) + 8          # the full path ends past PATH_MAX
    fd, rel = os.open(".", os.O_RDONLY), 0
    while rel < want:
        name = "d" * min(200, want - rel)
        os.mkdir(name, dir_fd=fd)
        fd, rel = os.open(name, os.O_RDONLY, dir_fd=fd), rel + len(name) + 1
    assert rel + 64 < PATH_MAX, "the worktree's path is too short for the attack"
    return fd
"""


def test_generated_files_whose_full_path_passes_path_max_are_left_out_of_the_commit(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    # The walk decides whether git is asked for untracked generated files at all. A bytecode file
    # the walk cannot list (its full path is too long to open) but git can (git reads paths from the
    # worktree) would be committed, and judged in place of nothing. Defended by residue.scan opening
    # each folder by its path from the worktree (`os.open(folder, ..., dir_fd=top)`), as git does.
    cmd = agent_script(DEEP + """
fd = deep_folder()
os.mkdir("__pycache__", dir_fd=fd)
pyc = os.open("__pycache__/core.cpython-311.pyc", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
os.write(pyc, b"bytecode standing for other code")
Path("app/core.py").write_text("VALUE = 2\\n")
""")
    res = start(repo, tmp_path, cmd)
    assert res.returncode == 0, res.stdout + res.stderr
    assert status(repo)["tasks"][0]["status"] == "merged"
    committed = tree_paths(repo, integration(repo))
    assert not [p for p in committed if p.endswith(".pyc")], "a generated file was committed"
    [left] = [e for e in events(repo) if e["kind"] == "leftovers-excluded"]
    assert left["files"][0].endswith("__pycache__/ (1 file)")


def test_a_repository_whose_full_path_passes_path_max_is_found(repo: Repo, tmp_path: Path,
                                                              agent_script: Any) -> None:
    # The same depth hides a nested repository from a walk of full paths; git would then meet it in
    # the leftovers' `git add`. Defended by residue.scan (above) and residue.remove, which deletes it
    # by its path from the worktree too.
    cmd = agent_script(DEEP + """
fd = deep_folder()
for sub in ("nested", "nested/.git", "nested/.git/objects", "nested/.git/refs"):
    os.mkdir(sub, dir_fd=fd)
head = os.open("nested/.git/HEAD", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
os.write(head, b"ref: refs/heads/main\\n")
Path("app/core.py").write_text("VALUE = 2\\n")
""")
    res = start(repo, tmp_path, cmd)
    assert res.returncode == 1, res.stdout + res.stderr
    reasons = [e["reason"] for e in events(repo) if e["kind"] == "agent-failed"]
    assert len(reasons) == 3 and all("made a git repository inside its worktree" in r for r in reasons), reasons


def test_odd_nested_git_entries_fail_the_attempt_and_hang_nothing(repo: Repo, tmp_path: Path,
                                                                   agent_script: Any) -> None:
    # A repository in a folder whose name holds a newline, a `.git` that is a FIFO (opening it
    # blocks), and a `.git` file spelling its way into the modules folder through `..` to a
    # repository of the agent's, with a filter that would run as the user. Defended by residue.scan
    # (every `.git` below the top is listed unless `_points_into` vouches for it after normpath, and
    # nothing is opened but with O_NONBLOCK) and AttemptRunner's nested check, which fails the attempt.
    marker = tmp_path / "filter-ran"
    evil = tmp_path / "evil"
    cmd = agent_script(f"""
import subprocess
subprocess.run(["git", "init", "-q", "one\\ntwo"], check=True)
os.mkdir("fifo")
os.mkfifo("fifo/.git")
subprocess.run(["git", "init", "-q", {str(evil)!r}], check=True)
subprocess.run(["git", "-C", {str(evil)!r}, "config", "filter.x.clean", "touch {marker}; cat"], check=True)
common = subprocess.run(["git", "rev-parse", "--git-common-dir"], capture_output=True, text=True).stdout.strip()
os.mkdir("sub")
Path("sub/.git").write_text("gitdir: " + os.path.abspath(common) + "/modules/../../../evil/.git\\n")
Path("sub/.gitattributes").write_text("* filter=x\\n")
Path("sub/f.txt").write_text("f\\n")
Path("app/core.py").write_text("VALUE = 2\\n")
""")
    began = time.monotonic()
    res = start(repo, tmp_path, cmd)
    assert time.monotonic() - began < 60
    assert res.returncode == 1, res.stdout + res.stderr
    assert not marker.exists()
    [first, *_] = [e["reason"] for e in events(repo) if e["kind"] == "agent-failed"]
    assert "made a git repository inside its worktree" in first
    assert first.endswith("(fifo/.git, one\ntwo/.git, sub/.git)")
    assert integration(repo) and repo.show(integration(repo), "app/core.py") == "VALUE = 1"


def test_a_walk_meets_link_loops_and_a_link_to_the_root_without_following_them(tmp_path: Path) -> None:
    # Links the agent leaves: a loop and a link to /. Following either, the walk would never end or
    # walk the machine. Defended by residue.scan: `is_dir(follow_symlinks=False)` and O_NOFOLLOW.
    root = tmp_path / "wt"
    (root / "a" / "__pycache__").mkdir(parents=True)
    (root / "a" / "loop").symlink_to("..")
    (root / "everything").symlink_to("/")
    (root / "node_modules").symlink_to(root / "a")       # a link named like a generated folder
    began = time.monotonic()
    found = residue.scan(root, common_dir=tmp_path / "common")
    assert time.monotonic() - began < 5
    assert found == residue.Found(nested=[], generated=["a/__pycache__"])


def test_a_planted_index_lock_fails_only_its_attempt(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    # An index.lock left in the worktree's git dir makes the leftovers' `git add` fail. Defended by
    # AttemptRunner._commit_leftovers (`git add -A` is checked: the attempt ends in an error, nothing
    # is committed) and SlotPool._drop_transient (the next attempt in that slot finds no lock).
    cmd = agent_script("""
import subprocess
Path("app/core.py").write_text("VALUE = 2\\n")
if os.environ["WSWARM_ATTEMPT"] == "1":
    lock = subprocess.run(["git", "rev-parse", "--git-path", "index.lock"], capture_output=True, text=True)
    Path(lock.stdout.strip()).write_text("")
""")
    res = start(repo, tmp_path, cmd)
    assert res.returncode == 0, res.stdout + res.stderr
    [t] = status(repo, allow_errors=True)["tasks"]
    assert (t["status"], t["attempts"]) == ("merged", 2)
    [error] = [e for e in events(repo) if e["kind"] == "error"]
    assert error["attempt"] == 1 and "git add -A" in error["reason"]
    assert repo.show(integration(repo), "app/core.py") == "VALUE = 2"


def test_an_agent_pointing_head_at_the_integration_branch_moves_nothing(repo: Repo, tmp_path: Path,
                                                                      agent_script: Any) -> None:
    # HEAD made to name the integration branch: a `git commit` of the leftovers would land there,
    # ungated. Defended by AttemptRunner._left_branch (HEAD must name the attempt's own branch before
    # anything is committed) and the compare-and-swap in _commit_leftovers (it moves only that branch).
    cmd = agent_script("""
import subprocess
Path("app/core.py").write_text("VALUE = 'ungated'\\n")
run = os.environ["WSWARM_RUN_ID"]
subprocess.run(["git", "symbolic-ref", "HEAD", f"refs/heads/wswarm/{run}/integration"], check=True)
""")
    base = repo.git("rev-parse", "HEAD")
    res = start(repo, tmp_path, cmd)
    assert res.returncode == 1, res.stdout + res.stderr
    reasons = [e["reason"] for e in events(repo) if e["kind"] == "agent-failed"]
    assert len(reasons) == 3 and all("the agent left its branch" in r for r in reasons)
    assert repo.git("rev-parse", integration(repo)) == base
    tasks = [b for b in repo.git("for-each-ref", "--format=%(refname)", "refs/heads/wswarm").split() if "/tasks/" in b]
    assert len(tasks) == 3 and all(repo.git("rev-parse", b) == base for b in tasks)



def test_a_workers_outcome_replayed_beside_a_local_attempt_is_rejected(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    # Anyone who can write to Redis (no cluster key needed) copies a worker's signed outcome back onto
    # the stream while an attempt runs on the integrator's machine. Defended by RedisExecutor._current:
    # an outcome counts only under the token of a live request sent to workers; a local attempt has
    # none, and a settled one's token is forgotten, so the copy is rejected and nothing merges twice.
    agent, marks = agent_cmd(tmp_path)
    plan = write_plan(tmp_path / "plan.json", [task(t, files=[f"out/{t}.txt"]) for t in "ab"])
    integrator = side_by_side(cluster, plan, agent, marks)
    try:
        where = until(lambda: {e["task"]: e.get("local", False) for e in remote_events(cluster.repo)
                               if e["kind"] == "attempt-assigned"} if (marks / "a-1.pid").is_file()
                      and (marks / "b-1.pid").is_file() else None, what="a and b both running")
        [local] = [t for t, here in where.items() if here]
        [remote] = [t for t, here in where.items() if not here]
        (marks / f"wait-{remote}").unlink()
        until(lambda: any(e["kind"] == "merged" and e["task"] == remote for e in remote_events(cluster.repo)),
              what="the worker's attempt merged")
        client = cluster.client()
        [stream] = client.keys("wswarm:*:outcomes")
        [(_, fields)] = client.xrange(stream)
        client.xadd(stream, fields)
        until(lambda: any(e["kind"] == "remote-result-rejected" for e in remote_events(cluster.repo)),
              what="the copy rejected")
    finally:
        (marks / "go").write_text("")
        _, err = integrator.communicate(timeout=120)
    assert integrator.returncode == 0, err
    evs = remote_events(cluster.repo)
    [rejected] = [e for e in evs if e["kind"] == "remote-result-rejected"]
    assert (rejected["task"], rejected["attempt"], rejected["worker"]) == (remote, 1, "w1")
    assert sorted((e["task"], e["attempt"]) for e in evs if e["kind"] == "merged") == [("a", 1), ("b", 1)]
    assert [e.get("worker") for e in evs if e["kind"] == "agent-finished" and e["task"] == local] == [None]


# Points its worktree's git dir at a common dir of its own: the repository's objects and refs (so
# commits still land) under a config whose clean filter runs, as the user, in every git add there.
REDIRECT_COMMONDIR = """
import subprocess
def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
admin = Path(git("rev-parse", "--absolute-git-dir"))
common = Path(git("rev-parse", "--path-format=absolute", "--git-common-dir"))
evil = Path(os.environ["EVIL"])
evil.mkdir()
for name in ("objects", "refs", "packed-refs", "worktrees", "HEAD", "logs"):
    if (common / name).exists():
        (evil / name).symlink_to(common / name)
(evil / "config").write_text((common / "config").read_text() + f'[core]\\n\\tattributesFile = {evil}/attrs\\n'
                             f'[filter "planted"]\\n\\tclean = "touch {evil}/ran-$$; cat"\\n')
(evil / "attrs").write_text("*.py filter=planted\\n")
(admin / "commondir").write_text(str(evil) + "\\n")
Path("app/core.py").write_text("VALUE = 2\\n")
"""


def test_a_slot_pointed_at_another_common_dir_is_put_back_for_the_next_run(repo: Repo, tmp_path: Path,
                                                                           agent_script: Any) -> None:
    # A command agent rewrites its slot's `commondir`: git in that slot then reads a config of the
    # agent's, which no guard of the repository's config sees. Kept, it would act in every later run
    # (the filter runs in wswarm's own git calls there, whatever agent the run uses). Defended by
    # slot_files.undo_steering right after the agent (which fails its attempt), and by
    # SlotPool._drop_transient, which writes `commondir` back before any git command in the slot.
    evil = tmp_path / "evil"
    first = write_plan(tmp_path / "first.json", [task("t", "change the app")])
    res = wswarm(repo.path, "start", "--plan", str(first), "--agent-cmd", agent_script(REDIRECT_COMMONDIR),
                 env={"EVIL": str(evil)})
    assert res.returncode == 1, res.stdout + res.stderr
    assert [e for e in events(repo) if e["kind"] == "agent-failed" and "(commondir)" in e["reason"]]
    slots = sorted((repo.path / ".git" / "worktrees").iterdir())
    assert slots and all((s / "commondir").read_bytes() == b"../..\n" for s in slots)
    ran = len(list(evil.glob("ran-*")))
    assert ran == 0
    second = write_plan(tmp_path / "second.json", [task("u", "add a module")])
    harmless = agent_script('Path("app/other.py").write_text("OTHER = 1\\\\n")\n', name="harmless.py")
    res = wswarm(repo.path, "start", "--plan", str(second), "--agent-cmd", harmless)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(list(evil.glob("ran-*"))) == ran


def test_an_unmerged_index_and_intent_to_add_entries_commit_what_the_worktree_holds(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    # The agent leaves a conflicted merge (stages 1-3 of app/core.py, MERGE_HEAD) and an intent-to-add
    # entry whose file changed since: `write-tree` of that index would fail or commit an empty blob.
    # Defended by _commit_leftovers' `git add -A`, which stages what the worktree holds for both, and
    # by commit-tree's one parent (the branch), so MERGE_HEAD brings no other history in.
    cmd = agent_script("""
import subprocess
def git(*args):
    subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=b", *args], check=True, capture_output=True)
git("switch", "-q", "-c", "side")
Path("app/core.py").write_text("VALUE = 'side'\\n")
git("commit", "-qam", "side")
git("switch", "-q", "-")
Path("app/core.py").write_text("VALUE = 'mine'\\n")
git("commit", "-qam", "mine")
subprocess.run(["git", "merge", "-q", "side"], capture_output=True)       # conflicts
Path("app/core.py").write_text("VALUE = 'resolved in the worktree'\\n")
Path("app/new.py").write_text("NEW = 1\\n")
git("add", "-N", "app/new.py")
Path("app/new.py").write_text("NEW = 2\\n")
""")
    res = start(repo, tmp_path, cmd)
    assert res.returncode == 0, res.stdout + res.stderr
    head = integration(repo)
    assert repo.show(head, "app/core.py") == "VALUE = 'resolved in the worktree'"
    assert repo.show(head, "app/new.py") == "NEW = 2"
    side = repo.git("rev-parse", "--verify", "refs/heads/side")
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", side, head], cwd=repo.path)
    assert ancestor.returncode == 1, "the side branch's history came in with the leftovers"
