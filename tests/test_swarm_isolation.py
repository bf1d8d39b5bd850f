"""What a run leaves alone and what it cleans up, in whole runs: the user's checkout (branch,
index, stash, untracked files), a worktree for each of many agents starting at once, and
`wswarm clean`."""

from __future__ import annotations

from pathlib import Path

from conftest import Repo, events, idle_slots, run_dir, status, task, worktree_paths, wswarm
from swarm_run import AgentScript, branches, by_id, first_parents, make_agent, rec_env, recorded, start


# -- the user's checkout is never touched ---------------------------------------------------

def test_users_checkout_index_branch_and_stash_are_untouched(repo: Repo, agent_script: AgentScript,
                                                             rec_dir: Path, tmp_path: Path) -> None:
    repo.git("checkout", "-q", "-b", "feature")
    repo.write("README.md", "# sample\nfeature work\n")
    head = repo.commit_all("feature work")
    repo.write("app/core.py", "VALUE = 'stashed'\n")
    repo.git("stash", "push", "-q", "-m", "my stash")
    repo.write("app/core.py", "VALUE = 'dirty'\n")          # modified, not staged
    repo.write("README.md", "# sample\nstaged change\n")
    repo.git("add", "README.md")                              # staged
    repo.write("README.md", "# sample\nstaged change\nand more\n")  # staged and modified again
    repo.write("notes.txt", "untracked\n")                    # untracked

    def snapshot() -> dict[str, str]:
        return {"status": repo.git("status", "--porcelain"), "branch": repo.git("symbolic-ref", "HEAD"),
                "head": repo.git("rev-parse", "HEAD"), "stash": repo.git("stash", "list"),
                "stash_sha": repo.git("rev-parse", "refs/stash"), "cached": repo.git("diff", "--cached"),
                "diff": repo.git("diff"), "core": (repo.path / "app/core.py").read_text(),
                "readme": (repo.path / "README.md").read_text(), "notes": (repo.path / "notes.txt").read_text(),
                "branches": repo.git("for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/feature",
                                     "refs/heads/main"),
                "files": repr(sorted(str(p.relative_to(repo.path)) for p in repo.path.rglob("*")
                                     if ".git" not in p.parts))}

    before = snapshot()
    cmd = make_agent(agent_script, """
        record(core=Path("app/core.py").read_text(), readme=Path("README.md").read_text(),
               notes=Path("notes.txt").exists())
        Path("app/feature.py").write_text("FEATURE = 1\\n")
    """)
    res = start(repo, tmp_path, [task("feat", "Add the feature module")], "--agent-cmd", cmd, env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    assert snapshot() == before
    assert (f"warning: {repo.path} has uncommitted changes; they are not included "
            f"(tasks start from HEAD = {head[:12]})") in res.stderr
    seen = recorded(rec_dir, "feat", 1)
    assert (seen["core"], seen["readme"], seen["notes"]) == ("VALUE = 1\n", "# sample\nfeature work\n", False)
    assert seen["WSWARM_BASE"] == head
    st = status(repo)
    assert st["base"] == head
    assert first_parents(repo, st["integration_branch"])[1] == head
    # The PR's base is the branch the user was on.
    assert f"based on `feature` (`{head[:12]}`)" in (run_dir(repo, st["run"]) / "pr.md").read_text()


def test_many_agents_starting_at_once_all_get_a_worktree(repo: Repo, tmp_path: Path) -> None:
    # Concurrent `git worktree add` calls race: one reads another's half-written
    # .git/worktrees/*/commondir and dies with exit 128. Before worktree adds and removes took
    # turns, a swarm of 64 agents at once hit it in each of 20 trial runs (2 to 18 failed adds).
    cmd = 'printf "%s\\n" "$WSWARM_TASK_ID" > "file-$WSWARM_TASK_ID.txt"'
    res = start(repo, tmp_path, [task(f"t{i}", f"Task {i}") for i in range(64)], "--agent-cmd", cmd,
                "--agents", "64", "--max-attempts", "1")
    st = status(repo, allow_errors=True)
    errors = [e["reason"] for e in events(repo, st["run"]) if e["kind"] == "error"]
    assert errors == [], f"{len(errors)} errors, the first: {errors[0]}"
    assert [(t["status"], t["attempts"]) for t in st["tasks"]] == [("merged", 1)] * 64
    assert res.returncode == 0, res.stderr


# -- clean ------------------------------------------------------------------------------------

def test_clean_removes_worktrees_and_task_branches_but_not_integration(repo: Repo, agent_script: AgentScript,
                                                                       rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        if tid == "bad":
            sys.exit(3)
        Path("app/good.py").write_text("GOOD = 1\\n")
    """)
    res = start(repo, tmp_path, [task("good", "Works"), task("bad", "Fails")], "--agent-cmd", cmd,
                "--max-attempts", "1", env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    st = status(repo)
    run, integration = st["run"], st["integration_branch"]
    kept = Path(by_id(st)["bad"]["worktree"])
    assert kept.is_dir()
    idle = idle_slots(repo, kept=kept)
    assert branches(repo, "wswarm/") == sorted([integration, f"wswarm/{run}/tasks/good/1",
                                              f"wswarm/{run}/tasks/bad/1"])
    integration_sha = repo.git("rev-parse", integration)
    cleaned = wswarm(repo.path, "clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout == f"cleaned {run}: 1 worktrees, 2 branches removed\n"
    assert not kept.exists()
    # Idle slots are kept for the next run; `--slots` removes them too.
    assert worktree_paths(repo) == [repo.path, *idle]
    assert branches(repo, "wswarm/") == [integration]
    assert repo.git("rev-parse", integration) == integration_sha
    assert repo.git("symbolic-ref", "HEAD") == "refs/heads/main"
    assert repo.git("status", "--porcelain") == ""
    assert run_dir(repo, st["run"]).is_dir()              # the run's state and logs stay
    assert status(repo)["run"] == run
    again = wswarm(repo.path, "clean", "--integration", "--slots")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"cleaned {run}: 0 worktrees, 1 branches, {len(idle)} slots removed\n"
    assert branches(repo) == ["main"]
    assert [p.resolve() for p in worktree_paths(repo)] == [repo.path.resolve()]
    assert not any((repo.state_dir / "slots").iterdir())
