"""Hostile agents against what runs while agents work: snapshots of their worktrees, news files,
the base a branch that merged integration work is judged on, restarts. Real runs, real git, real
agent scripts playing the attacker.

The fake AWS key is assembled at run time: no literal here trips the repository's own secret checks.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tests.conftest import Repo, task, wswarm, write_plan


def _events(repo: Repo) -> list[dict[str, Any]]:
    [run] = (repo.state_dir / "runs").iterdir()
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _holders(path: Path) -> list[int]:
    """Processes with PATH open (deleted or not)."""
    found = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:
            continue
        if any(link.removesuffix(" (deleted)") == str(path) for link in links):
            found.append(int(fd_dir.parent.name))
    return found


# -- snapshots of a running worktree --------------------------------------------------------------

SPARSE_AGENT = """
import os
big = Path("big.bin").resolve()
with open(big, "wb") as f:
    f.truncate(1 << 40)                       # a terabyte that takes no disk and git hours to hash
Path("app/core.py").write_text("VALUE = 2\\n")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:          # until a snapshot's `git add` is reading it
    held = False
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            held = held or any(os.readlink(fd) == str(big) for fd in fd_dir.iterdir())
        except OSError:
            pass
    if held:
        break
    time.sleep(0.1)
else:
    sys.exit(3)
Path(os.environ["MARK"]).write_text(str(big))
big.unlink()                                # gone from the worktree; the reader keeps reading
"""


def test_a_sparse_file_a_snapshot_reads_neither_holds_the_run_nor_outlives_it(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    plan = write_plan(tmp_path / "plan.json", [task("sparse")])
    mark = tmp_path / "mark"
    began = time.monotonic()

    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script(SPARSE_AGENT),
                 env={"MARK": str(mark)}, timeout=120)

    assert res.returncode == 0, res.stderr
    assert mark.exists(), "no snapshot read the file: the attack was not tried"
    assert time.monotonic() - began < 90
    assert _holders(Path(mark.read_text())) == []       # no git left hashing it after the run


# -- what merges into the integration branch ------------------------------------------------------

# `early` merges first. `late`, running beside it from the same base, then swaps the content of the
# integration head for a commit of its own with `git replace`: the train's merge of `late` would read
# that content as "ours" and carry it onto the branch, though no gate ever saw it.
REPLACE_AGENT = """
import subprocess
def git(*args):
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout.strip()
tid = os.environ["WSWARM_TASK_ID"]
if tid == "early":
    Path("early.txt").write_text("early\\n")
    sys.exit(0)
prefix = "refs/heads/wswarm/" + os.environ["WSWARM_RUN_ID"]
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    tips = [line.split() for line in git("for-each-ref", "--format=%(objectname) %(refname)", prefix).splitlines()]
    [head] = [sha for sha, ref in tips if ref.endswith("/integration")] or [None]
    if head and head != os.environ["WSWARM_BASE"]:
        break
    time.sleep(0.1)
else:
    sys.exit(3)
key = "AK" + "IA" + "QX7RZ2LM" + "4N8PB6TW"
blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], input=f"KEY = '{key}'\\n", check=True,
                      capture_output=True, text=True).stdout.strip()
tree = subprocess.run(["git", "mktree"], check=True, capture_output=True, text=True,
                      input=git("ls-tree", head) + f"\\n100644 blob {blob}\\tplanted.py\\n").stdout.strip()
parents = git("rev-list", "--parents", "-n", "1", head).split()[1:]
fake = git("commit-tree", tree, *[a for p in parents for a in ("-p", p)], "-m", "looks like a merge")
git("replace", head, fake)
Path("late.txt").write_text("late\\n")
"""


def test_a_replace_ref_does_not_carry_unjudged_content_onto_the_integration_branch(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    plan = write_plan(tmp_path / "plan.json", [task("early"), task("late")])
    repo.write("wswarm.toml", "[limits]\nmax_load = 1000\n")     # late waits for early: both run at once

    wswarm(repo.path, "start", "--plan", str(plan), "--agents", "2", "--agent-cmd", agent_script(REPLACE_AGENT))

    assert [e for e in _events(repo) if e["kind"] == "merged" and e["task"] == "late"], "the attack was not tried"
    branch = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    files = repo.git("--no-replace-objects", "ls-tree", "-r", "--name-only", branch).split()
    assert "planted.py" not in files and {"early.txt", "late.txt"} <= set(files)


# Three tasks from one base. `two` brings a key in with a merge commit, then commits a file, then
# drops the key: judged on what its branch adds, it is clean. `four` builds on two's first commit and drops the key too: clean. Once both
# merged, `three` merges two's middle commit (which still holds the key) and four's head, and puts the
# key back. Its branch then has two merge bases with the integration branch; judged from the one
# holding the key, its diff shows no key, while git's merge (from a blend of both, which holds none)
# brings the key in.
CRISS_CROSS_AGENT = """
import subprocess
def git(*args):
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout.strip()
shared = Path(os.environ["SHARED"])
tid = os.environ["WSWARM_TASK_ID"]
key = "AK" + "IA" + "QX7RZ2LM" + "4N8PB6TW"
def wait_for(check):
    deadline = time.monotonic() + 60
    while not check():
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.1)
if os.environ["WSWARM_ATTEMPT"] != "1":
    sys.exit(1)
if tid == "two":
    # The key comes in with a merge commit: the gate reads the history's other commits for keys.
    Path("a2.txt").write_text("two\\n")
    git("add", "a2.txt"); git("commit", "-qm", "a2")
    git("checkout", "-q", "-b", "side", os.environ["WSWARM_BASE"])
    Path("d.txt").write_text("side\\n")
    git("add", "d.txt"); git("commit", "-qm", "side")
    git("checkout", "-q", "-")
    git("merge", "-q", "--no-ff", "--no-commit", "side")
    Path("s.py").write_text(f"KEY = '{key}'\\n")
    git("add", "s.py"); git("commit", "-qm", "c1")
    git("branch", "-q", "-D", "side")
    (shared / "c1").write_text(git("rev-parse", "HEAD"))
    Path("t2.txt").write_text("two\\n")
    git("add", "t2.txt"); git("commit", "-qm", "c2")
    (shared / "c2").write_text(git("rev-parse", "HEAD"))
    git("rm", "-q", "s.py"); git("commit", "-qm", "two")
elif tid == "four":
    wait_for(lambda: (shared / "c1").exists())
    git("merge", "-q", "--no-edit", (shared / "c1").read_text())
    git("rm", "-q", "s.py")
    Path("t4.txt").write_text("four\\n")
    git("add", "t4.txt"); git("commit", "-qm", "four")
    (shared / "h4").write_text(git("rev-parse", "HEAD"))
else:
    integration = "refs/heads/wswarm/" + os.environ["WSWARM_RUN_ID"] + "/integration"
    wait_for(lambda: len(git("rev-list", "--first-parent", "--merges", integration).split()) == 2)
    git("merge", "-q", "--no-edit", (shared / "c2").read_text())
    # The key stays in the merge commit (four's head dropped it): no commit of the branch but a merge adds it.
    subprocess.run(["git", "merge", "-q", "--no-commit", (shared / "h4").read_text()], capture_output=True)
    Path("s.py").write_text(f"KEY = '{key}'\\n")
    git("add", "-A"); git("commit", "-qm", "merge four")
    Path("t3.txt").write_text("three\\n")
    git("add", "-A"); git("commit", "-qm", "three")
    (shared / "three").touch()
"""


def test_a_branch_with_two_merge_bases_is_not_judged_from_the_one_that_hides_a_key(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    repo.write("wswarm.toml", "[limits]\nmax_load = 1000\n")     # all three start from the base at once
    repo.commit_all("config")
    shared = tmp_path / "shared"
    shared.mkdir()
    plan = write_plan(tmp_path / "plan.json", [task("two"), task("four"), task("three")])

    wswarm(repo.path, "start", "--plan", str(plan), "--agents", "3", "--max-attempts", "1",
           "--agent-cmd", agent_script(CRISS_CROSS_AGENT), env={"SHARED": str(shared)})

    tasks = {t["id"]: t for t in wswarm(repo.path, "status", "--json").json()["tasks"]}
    branch = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    assert "s.py" not in repo.git("ls-tree", "-r", "--name-only", branch).split()
    # The key never reaches the integration branch, not even its history: the first step already fails,
    # since a key a merge commit brings in and a later commit drops is read in the branch's history.
    assert "AKIA" not in repo.git("log", "-p", "--remerge-diff", branch)
    assert tasks["two"]["status"] == "failed" and "secrets" in tasks["two"]["reason"]
    assert tasks["three"]["status"] != "merged"


# -- restarts -------------------------------------------------------------------------------------

# `younger` writes what `older` writes, each time it starts: with on_forecast = restart and nothing
# holding a restarted task back (overlap = ignore), it was stopped and started again, uncharged, every
# round for as long as `older` ran. `older` runs until `younger` is told of the conflict instead.
RESTART_LOOP_AGENT = """
shared = Path(os.environ["SHARED"])
tid = os.environ["WSWARM_TASK_ID"]
Path("app/core.py").write_text(f"VALUE = '{tid}'\\n")
if tid == "older":
    deadline = time.monotonic() + 45
    while not (shared / "told").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    sys.exit(0)
news = Path(os.environ["WSWARM_NEWS"])
deadline = time.monotonic() + 45
while time.monotonic() < deadline:
    if news.read_text().strip():
        (shared / "told").touch()
        break
    time.sleep(0.1)
"""


def test_a_task_that_heads_for_a_conflict_each_time_it_starts_is_restarted_a_bounded_number_of_times(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    from worktree_swarm.swarm.scheduler import MAX_RESTARTS

    repo.write("wswarm.toml", '[scheduler]\non_forecast = "restart"\noverlap = "ignore"\n'
                              "[limits]\nmax_load = 1000\n")
    repo.commit_all("config")
    shared = tmp_path / "shared"
    shared.mkdir()
    plan = write_plan(tmp_path / "plan.json", [task("older"), task("younger")])

    wswarm(repo.path, "start", "--plan", str(plan), "--agents", "2", "--agent-cmd", agent_script(RESTART_LOOP_AGENT),
           env={"SHARED": str(shared)}, timeout=180)

    restarts = [e for e in _events(repo) if e["kind"] == "restarted"]
    assert restarts and {e["task"] for e in restarts} == {"younger"}
    assert len(restarts) <= MAX_RESTARTS
    assert (shared / "told").exists()       # its next attempt heard of the conflict instead


# -- news files -----------------------------------------------------------------------------------

# `waits` swaps its news file for a link to a file of the user's, and plants a link where its next
# attempt's news file will be made; `quick` merges meanwhile, and its news is posted to `waits`.
NEWS_AGENT = """
tid = os.environ["WSWARM_TASK_ID"]
Path(f"{tid}.txt").write_text(tid + "\\\\n")
if tid == "waits" and os.environ["WSWARM_ATTEMPT"] == "1":
    news = Path(os.environ["WSWARM_NEWS"])
    victim = os.environ["VICTIM"]
    news.unlink()
    news.symlink_to(victim)
    later = news.parent.parent / "2"
    later.mkdir()
    (later / "news.jsonl").symlink_to(victim)
    Path(os.environ["MARK"]).touch()
    integration = "refs/heads/wswarm/" + os.environ["WSWARM_RUN_ID"] + "/integration"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        merges = subprocess.run(["git", "rev-list", "--merges", integration], capture_output=True, text=True)
        events = next(news.parent.parent.parent.parent.glob("events.jsonl")).read_text()
        if merges.stdout.strip() and '"kind": "news"' in events:
            break
        time.sleep(0.1)
    sys.exit(1)                               # a second attempt, whose news file was planted ahead
"""


def test_links_planted_at_news_files_neither_redirect_nor_stop_the_run(
        repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    repo.write("wswarm.toml", "[limits]\nmax_load = 1000\n")
    repo.commit_all("config")
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's\n")
    mark = tmp_path / "mark"
    plan = write_plan(tmp_path / "plan.json", [task("quick"), task("waits")])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "2", "--agent-cmd", agent_script(NEWS_AGENT),
                 env={"VICTIM": str(victim), "MARK": str(mark)})

    assert mark.exists(), "the attack was not tried"
    assert victim.read_text() == "the user's\n"
    assert res.returncode == 0, res.stderr
    tasks = {t["id"]: t for t in wswarm(repo.path, "status", "--json").json()["tasks"]}
    assert (tasks["waits"]["status"], tasks["waits"]["attempts"]) == ("merged", 2)
