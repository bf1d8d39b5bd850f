"""`wswarm gate` through the real command line on real repositories: a ref in a temporary worktree,
the index, the working tree; the base it chose; JSON; exit codes; nothing of the user's touched."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import Repo, Result, git, wswarm
from worktree_swarm.gate.builtin import CHECK_NAMES

# Assembled at run time so that this file holds no conflict-marker line of its own.
MARKER = "<" * 7 + " HEAD\n"
CHECK_FIELDS = {"name", "kind", "status", "seconds", "output", "note"}


def snapshot(repo: Repo) -> dict[str, object]:
    """What `wswarm gate` must leave exactly as it was."""
    return {
        "head": repo.git("rev-parse", "HEAD"),
        "head_ref": repo.git("symbolic-ref", "-q", "HEAD", check=False),
        "refs": repo.git("for-each-ref", "--format=%(refname) %(objectname)"),
        "worktrees": repo.git("worktree", "list", "--porcelain"),
        "status": repo.git("status", "--porcelain", "--untracked-files=all"),
        "index": (repo.path / ".git" / "index").read_bytes(),
    }


def first_line(res: Result) -> str:
    return res.stdout.splitlines()[0]


def branch_with(repo: Repo, name: str, rel: str, text: str) -> str:
    """A branch off the current commit holding one more commit; the checkout stays where it was."""
    here = repo.git("rev-parse", "--abbrev-ref", "HEAD")
    repo.git("checkout", "-q", "-b", name)
    repo.write(rel, text)
    sha = repo.commit_all(f"{name}: {rel}")
    repo.git("checkout", "-q", here)
    return sha


def assert_rejected(res: Result, expect: str) -> None:
    """Exit 2; one `wswarm: …` line naming the culprit, at most a hint after it; no report."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert lines and lines[0].startswith("wswarm: ") and expect in lines[0], res.stderr
    assert all(line.startswith("hint: ") for line in lines[1:]) and len(lines) <= 2, res.stderr
    assert res.stdout == "" and "Traceback" not in res.stderr


def test_ref_judges_what_the_branch_adds_over_main(repo: Repo) -> None:
    branch_with(repo, "feature", "feature.txt", "one\n" + MARKER)
    fork = repo.git("merge-base", "main", "feature")
    # main moves on with a problem of its own: not the branch's to answer for
    repo.write("main-only.txt", MARKER)
    repo.commit_all("main: a marker")
    before = snapshot(repo)

    res = wswarm(repo.path, "gate", "--ref", "feature")

    assert res.returncode == 1, res.stderr
    assert first_line(res).startswith("wswarm gate: feature (")
    assert f"against {fork[:7]}, the merge-base of main and feature" in first_line(res)
    assert "gate FAILED: conflict-markers ✗" in res.stdout
    assert "feature.txt:2: merge conflict marker" in res.stdout
    assert "main-only.txt" not in res.stdout
    assert snapshot(repo) == before


@pytest.mark.parametrize("passes", [True, False])
def test_ref_runs_checks_in_a_temporary_worktree_that_is_removed(repo: Repo, tmp_path: Path, passes: bool) -> None:
    branch_with(repo, "feature", "feature.txt", "only on the branch\n")
    out = tmp_path / "pwd.txt"
    # wswarm.toml is read from the user's checkout, committed or not
    verdict = "true" if passes else "false"
    repo.write("wswarm.toml", '[[gate.checks]]\nname = "has-feature"\nkind = "tests"\n'
                              f'run = "pwd > \\"$GATE_OUT\\" && test -f feature.txt && {verdict}"\n')
    before = snapshot(repo)

    res = wswarm(repo.path, "gate", "--ref", "feature", env={"GATE_OUT": str(out)})

    assert res.returncode == (0 if passes else 1), res.stdout + res.stderr
    assert ("fail     has-feature" in res.stdout) is not passes
    ran_in = Path(out.read_text().strip()).resolve()
    assert ran_in.is_relative_to((repo.path / ".git" / "wswarm" / "gate").resolve())
    assert not ran_in.exists()
    assert repo.git("worktree", "list", "--porcelain").count("worktree ") == 1
    assert list((repo.path / ".git" / "wswarm" / "gate").iterdir()) == []
    assert snapshot(repo) == before


def test_ref_setup_step_runs_in_the_temporary_worktree_and_its_failure_is_reported(repo: Repo) -> None:
    branch_with(repo, "feature", "feature.txt", "x\n")
    repo.write("wswarm.toml", '[worktree]\nsetup = "echo setting up; exit 4"\n'
                              '[[gate.checks]]\nname = "tests"\nrun = "true"\n')

    res = wswarm(repo.path, "gate", "--ref", "feature")

    assert res.returncode == 1
    assert "fail     worktree-setup" in res.stdout and "exit 4" in res.stdout
    assert "setting up" in res.stdout
    assert "not-run  tests" in res.stdout and "the worktree setup step failed" in res.stdout
    assert repo.git("worktree", "list", "--porcelain").count("worktree ") == 1


def test_ref_already_on_main_is_judged_against_its_parent(repo: Repo) -> None:
    parent = repo.git("rev-parse", "HEAD")
    repo.write("app/core.py", "VALUE = 1\n" + MARKER)
    repo.commit_all("a bad commit on main")

    res = wswarm(repo.path, "gate", "--ref", "HEAD")

    assert res.returncode == 1
    assert f"against HEAD~1 ({parent[:7]}; the default: HEAD is already on main" in first_line(res)
    assert "app/core.py:2: merge conflict marker" in res.stdout


def test_root_commit_is_judged_against_the_empty_tree(repo: Repo) -> None:
    res = wswarm(repo.path, "gate", "--ref", "HEAD")

    assert res.returncode == 0, res.stdout + res.stderr
    assert "against the empty tree" in first_line(res)
    assert "gate passed" in res.stdout


def test_explicit_base_that_moved_on_means_its_merge_base(repo: Repo) -> None:
    branch_with(repo, "feature", "feature.txt", "fine\n")
    fork = repo.git("merge-base", "main", "feature")
    repo.write("main-only.txt", MARKER)
    repo.commit_all("main moves on")

    res = wswarm(repo.path, "gate", "--ref", "feature", "--base", "main")

    assert res.returncode == 0, res.stdout
    assert f"against {fork[:7]}, the merge-base of main and feature" in first_line(res)


def test_staged_judges_the_index_and_the_working_tree_judges_everything(repo: Repo) -> None:
    repo.write("app/core.py", "VALUE = 2\n")
    repo.git("add", "app/core.py")
    repo.write("README.md", "# sample\n" + MARKER)        # changed, not staged
    before = snapshot(repo)

    staged = wswarm(repo.path, "gate", "--staged")
    tree = wswarm(repo.path, "gate")

    assert staged.returncode == 0, staged.stdout
    assert first_line(staged).startswith("wswarm gate: the index against HEAD (")
    assert tree.returncode == 1
    assert first_line(tree).startswith("wswarm gate: the working tree (untracked files included) against HEAD (")
    assert "README.md:2: merge conflict marker" in tree.stdout
    assert snapshot(repo) == before

    repo.git("add", "README.md")
    again = wswarm(repo.path, "gate", "--staged")
    assert again.returncode == 1 and "README.md:2" in again.stdout


def test_working_tree_includes_untracked_files_without_adding_them(repo: Repo) -> None:
    repo.write("notes/new.txt", MARKER)
    before = snapshot(repo)

    res = wswarm(repo.path, "gate")

    assert res.returncode == 1
    assert "notes/new.txt:1: merge conflict marker" in res.stdout
    assert snapshot(repo) == before
    assert repo.git("status", "--porcelain") == "?? notes/"


def test_staged_reads_the_index_git_hands_to_a_hook(repo: Repo, tmp_path: Path) -> None:
    """Inside a hook GIT_INDEX_FILE names the index being committed; the gate judges that one."""
    repo.write("bad.txt", MARKER)
    other = tmp_path / "other-index"
    env = {**os.environ, "GIT_INDEX_FILE": str(other)}
    subprocess.run(["git", "read-tree", "HEAD"], cwd=repo.path, env=env, check=True)
    subprocess.run(["git", "add", "bad.txt"], cwd=repo.path, env=env, check=True)

    plain = wswarm(repo.path, "gate", "--staged")
    hooked = wswarm(repo.path, "gate", "--staged", env={"GIT_INDEX_FILE": str(other)})

    assert plain.returncode == 0, plain.stdout
    assert hooked.returncode == 1, hooked.stdout + hooked.stderr
    assert "bad.txt:1: merge conflict marker" in hooked.stdout


def test_affected_check_gets_the_staged_paths(repo: Repo, tmp_path: Path) -> None:
    out = tmp_path / "args.txt"
    repo.write("wswarm.toml", '[[gate.checks]]\nname = "py"\nrun = "printf \'%s\\\\n\' > \\"$ARGS_OUT\\""\n'
                              'affected = true\nglob = "*.py"\n')
    repo.write("app/core.py", "VALUE = 3\n")
    repo.write("app/extra.py", "X = 1\n")
    repo.git("add", "app/core.py")

    res = wswarm(repo.path, "gate", "--staged", env={"ARGS_OUT": str(out)})

    assert res.returncode == 0, res.stdout + res.stderr
    assert out.read_text().split() == ["./app/core.py"]


def test_json_is_the_report_and_the_base_goes_to_stderr(repo: Repo) -> None:
    repo.write("wswarm.toml", '[[gate.checks]]\nname = "fails"\nkind = "lint"\nrun = "echo broken; exit 3"\n')

    res = wswarm(repo.path, "gate", "--json")

    assert res.returncode == 1
    data = res.json()
    assert set(data) == {"passed", "checks"} and data["passed"] is False
    assert [c["name"] for c in data["checks"]] == [*CHECK_NAMES, "fails"]
    assert all(set(c) == CHECK_FIELDS for c in data["checks"])
    failed = data["checks"][-1]
    assert (failed["kind"], failed["status"], failed["note"]) == ("lint", "fail", "exit 3")
    assert "broken" in failed["output"]
    assert res.stderr.startswith("wswarm gate: the working tree")


def test_a_passing_gate_exits_0_with_the_report(repo: Repo) -> None:
    res = wswarm(repo.path, "gate", "--json")

    assert res.returncode == 0
    assert json.loads(res.stdout)["passed"] is True


@pytest.mark.parametrize("args, expect", [
    (("--ref", "no-such-ref"), "--ref 'no-such-ref' does not name a commit"),
    (("--ref", "HEAD", "--base", "nope~3"), "--base 'nope~3' does not name a commit"),
    (("--staged", "--base", "nope"), "--base 'nope' does not name a commit"),
    (("--ref", "HEAD", "--staged"), "--ref and --staged judge different things"),
])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(repo: Repo, args: tuple[str, ...], expect: str) -> None:
    before = snapshot(repo)

    res = wswarm(repo.path, "gate", *args)

    assert_rejected(res, expect)
    assert snapshot(repo) == before


def test_outside_a_repository_is_exit_2(tmp_path: Path) -> None:
    assert_rejected(wswarm(tmp_path, "gate"), "is not inside a git repository")


def test_staged_with_unresolved_conflicts_is_refused_but_the_working_tree_is_judged(repo: Repo) -> None:
    branch_with(repo, "other", "app/core.py", "VALUE = 'other'\n")
    repo.write("app/core.py", "VALUE = 'main'\n")
    repo.commit_all("main edits core")
    git(repo.path, "merge", "-q", "other", check=False)  # conflicts

    staged = wswarm(repo.path, "gate", "--staged")
    tree = wswarm(repo.path, "gate")

    assert_rejected(staged, "the index has unresolved conflicts: app/core.py")
    assert tree.returncode == 1 and "app/core.py:1: merge conflict marker" in tree.stdout
    assert repo.git("ls-files", "--unmerged") != ""   # still the user's conflict to resolve
