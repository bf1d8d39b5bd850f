"""Slots: worktrees reused between tasks. A recycled slot must be indistinguishable from a fresh
`git worktree add` (tracked contents, untracked files, index, HEAD), whatever its last task did."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import Repo, git, wswarm, write_plan
from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.git.slot_files import slots_dir
from worktree_swarm.git.slots import SlotPool
from worktree_swarm.util.types import BranchName, Sha


@pytest.fixture
def commits(repo: Repo) -> tuple[Sha, Sha]:
    """A, then B: B edits, deletes and adds files, and stops ignoring tmp/ (build/ stays ignored)."""
    for name in "abcde":
        repo.write(f"{name}.txt", f"{name}\n")
    repo.write("lib/keep.txt", "keep\n")
    repo.write(".gitignore", "build/\ntmp/\n")
    a = repo.commit_all("A")
    repo.write("a.txt", "a from B\n")
    (repo.path / "b.txt").unlink()
    repo.write("lib/new.txt", "new\n")
    repo.write(".gitignore", "build/\n")
    b = repo.commit_all("B")
    # A branch whose a.txt conflicts with A's, for a merge left half-done.
    repo.git("branch", "other", a)
    repo.git("worktree", "add", "-q", str(repo.path.parent / "other"), "other")
    (repo.path.parent / "other" / "a.txt").write_text("a from other\n")
    git(repo.path.parent / "other", "commit", "-qam", "other")
    repo.git("worktree", "remove", str(repo.path.parent / "other"))
    return Sha(a), Sha(b)


def pool(repo: Repo, *, size: int = 1, start: str, keep_ignored: bool = True, **kw: object) -> SlotPool:
    return SlotPool(GitRepo.discover(repo.path), size=size, start=Sha(start), keep_ignored=keep_ignored,
                    **kw).open()  # type: ignore[arg-type]


def mess_up(slot: Path) -> None:
    """Everything a task's agent and checks may leave behind."""
    (slot / "e.txt").write_text("committed by the agent\n")
    git(slot, "commit", "-qam", "agent's commit")
    git(slot, "switch", "-q", "-c", "wandered-off")
    (slot / "a.txt").write_text("a from the task\n")
    git(slot, "commit", "-qam", "conflicts with other")
    git(slot, "merge", "-q", "other", check=False)          # conflicts: MERGE_HEAD, stages 1-3
    assert git(slot, "rev-parse", "-q", "--verify", "MERGE_HEAD", check=False)
    (slot / "a.txt").write_text("left modified\n")
    (slot / "lib" / "keep.txt").unlink()
    (slot / "untracked.txt").write_text("u\n")
    (slot / "scratch" / "deep").mkdir(parents=True)
    (slot / "scratch" / "deep" / "f.txt").write_text("f\n")
    (slot / "empty-dir").mkdir()
    git(slot, "init", "-q", "nested")
    (slot / "nested" / "n.txt").write_text("n\n")
    (slot / "staged.txt").write_text("staged\n")
    git(slot, "add", "staged.txt")
    git(slot, "update-index", "--assume-unchanged", "c.txt")
    (slot / "c.txt").write_text("hidden by assume-unchanged\n")
    git(slot, "update-index", "--skip-worktree", "d.txt")
    (slot / "d.txt").write_text("hidden by skip-worktree\n")
    (slot / "build").mkdir()
    (slot / "build" / "out.o").write_text("warm cache\n")
    (slot / "tmp").mkdir()
    (slot / "tmp" / "t.txt").write_text("ignored in A, not in B\n")


def files(path: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if rel == ".git":
            continue
        out[rel] = "dir" if p.is_dir() else p.read_bytes()
    return out


def assert_like_fresh(repo: Repo, slot: Path, branch: str, start: str, *, kept: dict[str, object]) -> None:
    fresh = repo.path.parent / "fresh"
    repo.git("worktree", "add", "-q", "-b", "fresh", str(fresh), start)
    assert git(slot, "symbolic-ref", "HEAD") == f"refs/heads/{branch}"
    assert git(slot, "rev-parse", "HEAD") == git(fresh, "rev-parse", "HEAD") == start
    for args in (("ls-files", "-s"), ("ls-files", "-v"), ("status", "--porcelain", "--untracked-files=all"),
                 ("ls-files", "--others", "--exclude-standard")):
        assert git(slot, *args) == git(fresh, *args), args
    # Nothing of a half-done merge, and no reflog naming the previous task's branch.
    for ref in ("MERGE_HEAD", "ORIG_HEAD", "@{-1}"):
        assert git(slot, "rev-parse", "-q", "--verify", ref, check=False) == git(
            fresh, "rev-parse", "-q", "--verify", ref, check=False), ref
    assert git(slot, "rev-parse", "-q", "--verify", "MERGE_HEAD", check=False) == ""
    assert git(slot, "ls-files", "--others", "--ignored", "--exclude-standard") == "\n".join(
        k for k, v in kept.items() if v != "dir")
    assert files(slot) == {**files(fresh), **kept}
    repo.git("worktree", "remove", "--force", str(fresh))


@pytest.mark.parametrize("keep_ignored", [True, False])
def test_a_recycled_slot_is_indistinguishable_from_a_fresh_worktree(repo: Repo, commits: tuple[Sha, Sha],
                                                                    keep_ignored: bool) -> None:
    a, b = commits
    slots = pool(repo, start=a, keep_ignored=keep_ignored)
    try:
        first = slots.acquire(name="t1", branch=BranchName("t1"), start=a)
        mess_up(first)
        admin = Path(git(first, "rev-parse", "--absolute-git-dir"))
        (admin / "index.lock").write_text("")          # as a git killed mid-command leaves it
        slots.release(first, keep=False)
        # Released: on no branch (t1 can be deleted), clean; only ignored files remain.
        assert git(first, "symbolic-ref", "-q", "HEAD", check=False) == ""
        repo.git("branch", "-D", "t1", "wandered-off")
        second = slots.acquire(name="t2", branch=BranchName("t2"), start=b)
        assert second == first
        kept = {"build": "dir", "build/out.o": b"warm cache\n"} if keep_ignored else {}
        assert_like_fresh(repo, second, "t2", b, kept=kept)
    finally:
        slots.close()


def test_switching_a_slot_writes_only_the_files_that_differ(repo: Repo, commits: tuple[Sha, Sha]) -> None:
    a, b = commits
    slots = pool(repo, start=a)
    try:
        slot = slots.acquire(name="t1", branch=BranchName("t1"), start=a)
        before = {n: os.stat(slot / n) for n in ("c.txt", "lib/keep.txt", "a.txt")}
        slots.release(slot, keep=False)
        assert slots.acquire(name="t2", branch=BranchName("t2"), start=b) == slot
        after = {n: os.stat(slot / n) for n in before}
        for same in ("c.txt", "lib/keep.txt"):
            assert (after[same].st_ino, after[same].st_mtime_ns) == (before[same].st_ino, before[same].st_mtime_ns)
        assert (slot / "a.txt").read_text() == "a from B\n"
        assert not (slot / "b.txt").exists() and (slot / "lib" / "new.txt").is_file()
    finally:
        slots.close()


HOLDER = """
import sys
from pathlib import Path
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.slots import SlotPool
from worktree_swarm.util.types import BranchName, Sha
repo, start, size, mess = Repo.discover(Path.cwd()), Sha(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "mess"
pool = SlotPool(repo, size=size, start=start).open()
held = [pool.acquire(name=f"held{i}", branch=BranchName(f"held{i}"), start=start) for i in range(size)]
if mess:
    for slot in held:
        (slot / "a.txt").write_text("dirty\\n")
        (slot / "junk.txt").write_text("junk\\n")
        admin = slot.parent.parent.parent / "worktrees" / slot.name
        (admin / "index.lock").write_text("")
        (admin / "MERGE_HEAD").write_text(start + "\\n")
print("\\n".join(str(p) for p in held), flush=True)
sys.stdin.read()     # held until the test closes stdin, or kills this process
pool.close()
"""


def holder(repo: Repo, start: str, size: int, *, mess: bool = False) -> tuple[subprocess.Popen[str], list[Path]]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, start, str(size), "mess" if mess else "-"],
                            cwd=repo.path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    held = [Path(proc.stdout.readline().strip()) for _ in range(size)]
    assert all(p.is_dir() for p in held)
    return proc, held


def test_two_runs_never_share_a_slot_and_slots_outlive_runs(repo: Repo, commits: tuple[Sha, Sha]) -> None:
    a, _ = commits
    other, held = holder(repo, a, 2)
    try:
        mine = pool(repo, size=2, start=a)
        try:
            got = [mine.acquire(name=f"m{i}", branch=BranchName(f"m{i}"), start=a) for i in range(2)]
            assert not set(got) & set(held)
            for path in got:
                mine.release(path, keep=False)
        finally:
            mine.close()
        res = wswarm(repo.path, "clean", "--slots")
        assert res.returncode == 0, res.stderr
        assert res.stdout == "removed 2 slots (2 slots in use by a running wswarm were left alone)\n"
        assert all(p.is_dir() for p in held)
    finally:
        assert other.stdin is not None
        other.stdin.close()
        assert other.wait(timeout=30) == 0
    # The other process is gone: its slots are kept for the next run, which takes them.
    again = pool(repo, size=2, start=a)
    try:
        got = [again.acquire(name=f"n{i}", branch=BranchName(f"n{i}"), start=a) for i in range(2)]
        assert sorted(got) == sorted(held)
    finally:
        again.close()
    assert sorted(p.name for p in slots_dir(GitRepo.discover(repo.path)).iterdir() if p.is_dir()) == sorted(
        p.name for p in held)


def test_a_slot_left_by_a_killed_process_is_reset_before_use(repo: Repo, commits: tuple[Sha, Sha]) -> None:
    a, b = commits
    proc, held = holder(repo, a, 1, mess=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    slots = pool(repo, start=a)
    try:
        slot = slots.acquire(name="t", branch=BranchName("t"), start=b)
        assert slot == held[0]                      # reset, not thrown away
        assert_like_fresh(repo, slot, "t", b, kept={})
    finally:
        slots.close()


def test_a_slot_whose_folder_vanished_is_discarded_not_trusted(repo: Repo, commits: tuple[Sha, Sha]) -> None:
    a, b = commits
    proc, held = holder(repo, a, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shutil.rmtree(held[0])
    stray = slots_dir(GitRepo.discover(repo.path)) / "slot-stray"
    stray.mkdir()                                   # a folder git does not know, with no lock file
    slots = pool(repo, start=a)
    try:
        slot = slots.acquire(name="t", branch=BranchName("t"), start=b)
        assert slot != held[0] and not stray.exists()
        assert_like_fresh(repo, slot, "t", b, kept={})
        assert str(held[0]) not in repo.git("worktree", "list")
    finally:
        slots.close()


def test_a_failed_tasks_slot_is_kept_aside_and_replaced(repo: Repo, commits: tuple[Sha, Sha]) -> None:
    a, b = commits
    slots = pool(repo, start=a)
    try:
        failed = slots.acquire(name="t1", branch=BranchName("t1"), start=a)
        (failed / "evidence.txt").write_text("what the agent left\n")
        slots.release(failed, keep=True)
        second = slots.acquire(name="t2", branch=BranchName("t2"), start=b)
        assert second != failed
        slots.release(second, keep=False)
    finally:
        slots.close()
    assert (failed / "evidence.txt").is_file() and git(failed, "symbolic-ref", "HEAD") == "refs/heads/t1"
    later = pool(repo, start=b)
    try:
        assert later.acquire(name="t3", branch=BranchName("t3"), start=b) == second
    finally:
        later.close()
    assert (failed / "evidence.txt").is_file()


def test_setup_runs_again_only_when_its_inputs_change(repo: Repo, commits: tuple[Sha, Sha]) -> None:
    a, _ = commits
    kw = {"setup": "make env", "setup_inputs": ("requirements*.txt",)}
    slots = pool(repo, start=a, **kw)
    try:
        slot = slots.acquire(name="t1", branch=BranchName("t1"), start=a)
        assert slots.setup_needed(slot)
        slots.setup_done(slot)
        slots.release(slot, keep=False)
        slot = slots.acquire(name="t2", branch=BranchName("t2"), start=a)
        assert not slots.setup_needed(slot)
        # The task installs a new dependency, then fails: its slot's environment matches no commit.
        (slot / "requirements.txt").write_text("new-dependency\n")
        slots.release(slot, keep=False)
        slot = slots.acquire(name="t3", branch=BranchName("t3"), start=a)
        assert slots.setup_needed(slot)
        slots.setup_done(slot)
        slots.release(slot, keep=False)
    finally:
        slots.close()
    # Remembered across runs, per slot.
    again = pool(repo, start=a, **kw)
    try:
        assert not again.setup_needed(again.acquire(name="t4", branch=BranchName("t4"), start=a))
    finally:
        again.close()
    wiped = pool(repo, start=a, keep_ignored=False, **kw)
    try:
        assert wiped.setup_needed(wiped.acquire(name="t5", branch=BranchName("t5"), start=a))
    finally:
        wiped.close()


SETUP_AGENT = textwrap.dedent("""
    import os
    from pathlib import Path
    tid = os.environ["WSWARM_TASK_ID"]
    assert Path(".env-ready").read_text() == Path("requirements.txt").read_text(), "stale environment"
    if tid == "bump":
        Path("requirements.txt").write_text("requests\\nrich\\n")
    Path(tid + ".txt").write_text(tid + "\\n")
""")


def test_a_run_skips_the_setup_step_while_the_inputs_are_unchanged(repo: Repo, tmp_path: Path) -> None:
    repo.write("requirements.txt", "requests\n")
    repo.write(".gitignore", ".env-ready\n")
    repo.write("wswarm.toml", '[worktree]\nsetup = "cp requirements.txt .env-ready && echo $WSWARM_TASK_ID >> '
               '\\"$SETUP_LOG\\""\nsetup_inputs = ["requirements.txt"]\n')
    repo.commit_all("requirements")
    agent = tmp_path / "agent.py"
    agent.write_text(SETUP_AGENT)
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "one", "description": "d"},
        {"id": "two", "description": "d", "dependencies": ["one"]},
        {"id": "bump", "description": "d", "dependencies": ["two"]},
        {"id": "after", "description": "d", "dependencies": ["bump"]}])
    log = tmp_path / "setup.log"
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "1", "--agent-cmd",
                 f"{sys.executable} {agent}", env={"SETUP_LOG": str(log)})
    assert res.returncode == 0, res.stderr
    assert log.read_text().split() == ["one", "after"]
    run = json.loads(wswarm(repo.path, "status", "--json").stdout)["run"]
    events = [json.loads(line) for line in (repo.state_dir / "runs" / run / "events.jsonl").read_text().splitlines()]
    assert [e["task"] for e in events if e["kind"] == "setup-skipped"] == ["two", "bump"]


def test_slots_can_be_turned_off(repo: Repo, tmp_path: Path) -> None:
    repo.write("wswarm.toml", "[worktree]\nslots = false\n")
    repo.commit_all("config")
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "description": "d"}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", 'pwd > "$OUT"; echo x > t.txt',
                 env={"OUT": str(tmp_path / "cwd")})
    assert res.returncode == 0, res.stderr
    assert Path((tmp_path / "cwd").read_text().strip()).parent == repo.state_dir / "worktrees"
    assert not (repo.state_dir / "slots").exists()
    assert len(repo.git("worktree", "list").splitlines()) == 1


def test_setup_inputs_outside_the_checkout_are_refused(repo: Repo, tmp_path: Path) -> None:
    repo.write("wswarm.toml", '[worktree]\nsetup = "true"\nsetup_inputs = ["../secrets.txt"]\n')
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "description": "d"}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", "true")
    assert res.returncode == 2
    assert "setup_inputs has '../secrets.txt'" in res.stderr
    assert not (repo.state_dir / "slots").exists()


def test_a_slot_whose_git_file_was_repointed_is_discarded_not_scrubbed(repo: Repo, commits: tuple[Sha, Sha]) -> None:
    a, b = commits
    slots = pool(repo, start=a)
    try:
        slot = slots.acquire(name="t1", branch=BranchName("t1"), start=a)
        # An agent points its checkout at the user's git dir: releasing must not clear that dir's
        # refs, logs and info, nor detach the user's HEAD.
        (slot / ".git").write_text(f"gitdir: {repo.path / '.git'}\n")
        slots.release(slot, keep=False)
        assert repo.git("symbolic-ref", "HEAD") == "refs/heads/main"
        assert repo.git("rev-parse", "main") == b and repo.git("rev-parse", "other")
        assert (repo.path / ".git" / "logs" / "HEAD").is_file()
        assert slots.acquire(name="t2", branch=BranchName("t2"), start=b) != slot and not slot.exists()
    finally:
        slots.close()


def test_waking_often_does_not_make_an_extra_slot_sooner(repo: Repo, commits: tuple[Sha, Sha]) -> None:
    a, _ = commits
    slots = pool(repo, start=a)
    try:
        first = slots.acquire(name="t1", branch=BranchName("t1"), start=a)
        got: list[Path] = []
        waiter = threading.Thread(target=lambda: got.append(slots.acquire(name="t2", branch=BranchName("t2"), start=a)))
        waiter.start()
        # Many wake-ups in well under _WAIT_BEFORE_EXTRA (each release and each slot made wakes every waiter).
        for _ in range(60):
            with slots._cond:
                slots._cond.notify_all()
            time.sleep(0.005)
        slots.release(first, keep=False)
        waiter.join(timeout=30)
        assert got == [first]
    finally:
        slots.close()


def test_a_slot_whose_orphaned_agent_still_runs_is_not_handed_to_a_new_run(repo: Repo, agent_script: object,
                                                                           tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    agent = agent_script(f"""
Path({str(marks)!r}, os.environ["WSWARM_TASK_ID"]).write_text(os.getcwd())
if os.environ["WSWARM_TASK_ID"] == "slow":
    time.sleep(120)
Path(os.environ["WSWARM_TASK_ID"] + ".txt").write_text("done\\n")
""")  # type: ignore[operator]
    write_plan(tmp_path / "slow.json", [{"id": "slow", "description": "takes its time"}])
    write_plan(tmp_path / "quick.json", [{"id": "quick", "description": "is quick"}])
    first = subprocess.Popen([sys.executable, "-m", "worktree_swarm", "start", "--plan", str(tmp_path / "slow.json"),
                              "--agents", "1", "--agent-cmd", agent], cwd=repo.path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (marks / "slow").exists():
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    orphan_slot = Path((marks / "slow").read_text())
    first.kill()            # the orchestrator dies; its agent, in a session of its own, lives on
    first.wait()
    orphan = int(next(line.split()[0] for line in
                      (p.read_text() for p in (repo.state_dir / "runs").rglob("agent.pid"))))
    try:
        res = wswarm(repo.path, "start", "--plan", str(tmp_path / "quick.json"), "--agents", "1",
                     "--agent-cmd", agent)
        assert res.returncode == 0, res.stderr
        # The orphan still holds its slot through the lock it inherited: the new run made another.
        assert Path((marks / "quick").read_text()) != orphan_slot
        assert git(orphan_slot, "symbolic-ref", "--short", "HEAD").endswith("/tasks/slow/1")
    finally:
        os.killpg(orphan, signal.SIGKILL)


def test_a_slots_commondir_is_left_alone_when_intact_and_replaced_whole_when_not(tmp_path: Path) -> None:
    # Every `git worktree add` reads every worktree's commondir: one rewritten in place on each release
    # was caught empty by the merge gate's worktree add now and then ("failed to read .../commondir").
    from worktree_swarm.git.slot_files import COMMONDIR, put_commondir

    admin = tmp_path / "admin"
    admin.mkdir()
    (admin / "commondir").write_bytes(COMMONDIR)
    before = os.stat(admin / "commondir")
    assert put_commondir(admin) is False
    after = os.stat(admin / "commondir")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # pointed elsewhere, or a link: replaced by a rename (the link itself, never its target)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"/somewhere/else\n")
    (admin / "commondir").unlink()
    (admin / "commondir").symlink_to(target)
    assert put_commondir(admin) is True
    assert (admin / "commondir").read_bytes() == COMMONDIR and not (admin / "commondir").is_symlink()
    assert target.read_bytes() == b"/somewhere/else\n"
    assert sorted(p.name for p in admin.iterdir()) == ["commondir"]
