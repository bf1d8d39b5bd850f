"""Whole runs on the merge train: tasks in parallel merge into one integration branch, a dependent
starts from its dependencies' merged work, a conflicting attempt is redone from the new integration
head, an agent's own commits are kept, the run starts from any base, and one agent at a time takes
the longest chain first."""

from __future__ import annotations

from pathlib import Path

from conftest import Repo, events, run_dir, status, task
from swarm_run import (AgentScript, attempt_dir, branches, by_id, first_parents, git_rc, make_agent, rec_env, recorded,
                       start, subjects)


# -- parallel tasks ---------------------------------------------------------------------------

def test_independent_tasks_run_in_parallel_and_both_merge(repo: Repo, agent_script: AgentScript,
                                                          rec_dir: Path, tmp_path: Path) -> None:
    # A barrier: each agent announces itself, then waits for the other. Run one after the
    # other, the first would wait in vain and fail.
    cmd = make_agent(agent_script, """
        other = {"alpha": "beta", "beta": "alpha"}[tid]
        sync = Path(os.environ["REC_DIR"])
        (sync / f"{tid}.here").write_text(str(time.time()))
        deadline = time.time() + 10
        while not (sync / f"{other}.here").exists():
            if time.time() > deadline:
                print(f"{tid} never saw {other} running")
                sys.exit(9)
            time.sleep(0.02)
        Path(f"app/{tid}.py").write_text(f"NAME = {tid!r}\\n")
        print(f"wrote app/{tid}.py")
    """)
    base = repo.git("rev-parse", "HEAD")
    res = start(repo, tmp_path, [task("alpha", "Add the alpha module"), task("beta", "Add the beta module")],
                "--agent-cmd", cmd, "--agents", "2", "--max-attempts", "1", env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    tasks = by_id(st)
    assert {t["id"]: (t["status"], t["attempts"]) for t in st["tasks"]} == {"alpha": ("merged", 1),
                                                                            "beta": ("merged", 1)}
    integration = st["integration_branch"]
    assert integration == f"wswarm/{st['run']}/integration"
    assert repo.show(integration, "app/alpha.py") == "NAME = 'alpha'"
    assert repo.show(integration, "app/beta.py") == "NAME = 'beta'"
    # Exactly two merge commits on the first-parent chain, then the base.
    chain = first_parents(repo, integration)
    assert len(chain) == 3 and chain[2] == base
    assert repo.git("rev-list", "--merges", integration).splitlines() == chain[:2]
    assert {tasks["alpha"]["merge_commit"], tasks["beta"]["merge_commit"]} == set(chain[:2])
    assert repo.git("rev-parse", f"{chain[1]}^1") == base
    assert repo.git("rev-parse", f"{chain[0]}^1") == chain[1]
    for tid, desc in (("alpha", "Add the alpha module"), ("beta", "Add the beta module")):
        merge = tasks[tid]["merge_commit"]
        assert repo.git("log", "-1", "--format=%s", merge) == f"wswarm: merge {tid} — {desc}"
        # The merge's second parent is the task branch, whose one commit holds the leftovers.
        assert repo.git("rev-parse", f"{merge}^2") == repo.git("rev-parse", tasks[tid]["branch"])
        assert repo.git("log", "-1", "--format=%s", tasks[tid]["branch"]) == f"{tid}: {desc}"
    merged = [e["task"] for e in events(repo, st["run"]) if e["kind"] == "merged"]
    assert sorted(merged) == ["alpha", "beta"]


# -- dependencies ------------------------------------------------------------------------------

def test_dependent_task_starts_from_its_dependencies_work(repo: Repo, agent_script: AgentScript,
                                                          rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        notes = Path("docs/notes.md")
        if tid == "notes":
            notes.parent.mkdir(exist_ok=True)
            notes.write_text("from notes\\n")
            print("analysed 2 modules")
            print("wrote docs/notes.md")
        else:
            record(notes=notes.read_text() if notes.exists() else None,
                   task_json=json.loads(Path(os.environ["WSWARM_TASK_JSON"]).read_text()),
                   prompt=Path(os.environ["WSWARM_PROMPT"]).read_text())
            Path(f"app/{tid}.py").write_text("USES_NOTES = True\\n")
            print(f"wrote app/{tid}.py")
    """)
    plan = [task("notes", "Write the notes", type="analysis", files=["docs/*"]),
            task("use", "Use the notes", type="backend", dependencies=["notes"], files=["app/use.py"]),
            task("last", "Build on both", dependencies=["use"])]
    res = start(repo, tmp_path, plan, "--agent-cmd", cmd, env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    tasks = by_id(st)
    use = recorded(rec_dir, "use", 1)
    assert use["notes"] == "from notes\n"
    assert use["WSWARM_BASE"] == tasks["notes"]["merge_commit"]
    notes_summary = {"id": "notes", "description": "Write the notes",
                     "summary": "analysed 2 modules\nwrote docs/notes.md", "files": ["docs/notes.md"]}
    assert use["task_json"] == {
        "run": st["run"], "attempt": 1, "base": tasks["notes"]["merge_commit"],
        "branch": f"wswarm/{st['run']}/tasks/use/1",
        "task": {"id": "use", "type": "backend", "description": "Use the notes", "dependencies": ["notes"],
                 "files": ["app/use.py"]},
        "dependencies": [notes_summary],
    }
    assert "## `notes`: Write the notes\n\nChanged: `docs/notes.md`\n\nanalysed 2 modules\nwrote docs/notes.md" \
        in use["prompt"]
    assert "# Task `use` (backend)\n\nUse the notes" in use["prompt"]
    # Transitive dependencies are listed too, oldest first.
    last = recorded(rec_dir, "last", 1)
    assert last["notes"] == "from notes\n"
    assert last["WSWARM_BASE"] == tasks["use"]["merge_commit"]
    assert [d["id"] for d in last["task_json"]["dependencies"]] == ["notes", "use"]
    assert last["task_json"]["dependencies"][1] == {"id": "use", "description": "Use the notes",
                                                    "summary": "wrote app/use.py", "files": ["app/use.py"]}
    # Dependencies merge first on the integration branch.
    assert subjects(repo, st["integration_branch"], "--first-parent")[:3] == [
        "wswarm: merge last — Build on both", "wswarm: merge use — Use the notes",
        "wswarm: merge notes — Write the notes"]


# -- conflicts ---------------------------------------------------------------------------------

def test_conflicting_task_is_requeued_from_the_new_integration_head(repo: Repo, agent_script: AgentScript,
                                                                    rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        core = Path("app/core.py")
        feedback = os.environ.get("WSWARM_FEEDBACK")
        record(core=core.read_text(), feedback_text=Path(feedback).read_text() if feedback else None)
        if tid == "first":
            core.write_text("VALUE = 2\\n")
        elif attempt == 1:
            # Finish only after `first` has merged, so this attempt is sure to conflict.
            branch = f"wswarm/{os.environ['WSWARM_RUN_ID']}/integration"
            deadline = time.time() + 10
            while "wswarm: merge first" not in git("log", "--format=%s", branch):
                if time.time() > deadline:
                    sys.exit(9)
                time.sleep(0.02)
            core.write_text("VALUE = 3\\n")
        else:
            core.write_text(core.read_text() + "OTHER = 3\\n")
    """)
    base = repo.git("rev-parse", "HEAD")
    res = start(repo, tmp_path, [task("first", "Set VALUE to 2"), task("second", "Set VALUE to 3")],
                "--agent-cmd", cmd, "--agents", "2", env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    tasks = by_id(st)
    assert (tasks["first"]["status"], tasks["first"]["attempts"]) == ("merged", 1)
    assert (tasks["second"]["status"], tasks["second"]["attempts"]) == ("merged", 2)
    assert tasks["second"]["branch"] == f"wswarm/{st['run']}/tasks/second/2"
    first_merge = tasks["first"]["merge_commit"]
    one, two = recorded(rec_dir, "second", 1), recorded(rec_dir, "second", 2)
    assert one["WSWARM_BASE"] == base
    # Attempt 2 starts from the integration head right after `first` merged, and sees its work.
    assert two["WSWARM_BASE"] == first_merge
    assert two["core"] == "VALUE = 2\n"
    feedback = (attempt_dir(repo, st, "second", 2) / "feedback.txt").read_text()
    assert two["feedback_text"] == feedback
    assert "Conflicting files: app/core.py\n" in feedback
    assert "CONFLICT (content): Merge conflict in app/core.py" in feedback
    assert "-VALUE = 1\n+VALUE = 3" in feedback      # the previous diff
    conflicts = [e for e in events(repo, st["run"]) if e["kind"] == "conflict"]
    assert [(e["task"], e["attempt"], e["files"]) for e in conflicts] == [("second", 1, ["app/core.py"])]
    requeued = [(e["task"], e["reason"]) for e in events(repo, st["run"]) if e["kind"] == "requeued"]
    assert requeued == [("second", "merge conflict in app/core.py")]
    integration = st["integration_branch"]
    assert repo.show(integration, "app/core.py") == "VALUE = 2\nOTHER = 3"
    assert first_parents(repo, integration) == [tasks["second"]["merge_commit"], first_merge, base]
    # The conflicting attempt never reached the integration branch.
    attempt1 = f"wswarm/{st['run']}/tasks/second/1"
    assert git_rc(repo, "merge-base", "--is-ancestor", attempt1, integration) == 1
    pr = (run_dir(repo, st["run"]) / "pr.md").read_text()
    assert "clean-run ratio **1/2** (50%)" in pr
    assert "- `second` attempt 1: conflict — merge conflict in app/core.py" in pr


# -- agents that commit -------------------------------------------------------------------------

def test_agent_commits_are_kept_and_leftovers_committed(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                                        tmp_path: Path) -> None:
    repo.git("config", "user.name", "Repo Owner")
    repo.git("config", "user.email", "owner@example.invalid")
    # The user's own commit hooks and signing must not stop wswarm's commits.
    repo.git("config", "commit.gpgsign", "true")
    repo.git("config", "gpg.program", "false")
    for hook in ("pre-commit", "commit-msg"):
        path = repo.path / ".git" / "hooks" / hook
        path.write_text("#!/bin/sh\necho refusing >&2\nexit 1\n")
        path.chmod(0o755)
    cmd = make_agent(agent_script, """
        Path("app/one.py").write_text("ONE = 1\\n")
        git("add", "app/one.py")
        git("-c", "user.name=Agent Smith", "-c", "user.email=agent@example.invalid", "-c", "commit.gpgsign=false",
            "commit", "--no-verify", "-q", "-m", "own: first step")
        Path("app/two.py").write_text("TWO = 2\\n")
    """)
    base = repo.git("rev-parse", "HEAD")
    res = start(repo, tmp_path, [task("own", "Add two modules")], "--agent-cmd", cmd, env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    branch = by_id(st)["own"]["branch"]
    log = repo.git("log", "--format=%s|%an <%ae>", f"{base}..{branch}").splitlines()
    assert log == ["own: Add two modules|Repo Owner <owner@example.invalid>",
                   "own: first step|Agent Smith <agent@example.invalid>"]
    assert repo.git("show", "--name-only", "--format=", branch) == "app/two.py"
    integration = st["integration_branch"]
    assert subjects(repo, integration, "--topo-order") == ["wswarm: merge own — Add two modules", "own: Add two modules",
                                          "own: first step", "initial"]
    assert repo.git("log", "-1", "--format=%an <%ae>", integration) == "Repo Owner <owner@example.invalid>"
    assert repo.show(integration, "app/one.py") == "ONE = 1"
    assert repo.show(integration, "app/two.py") == "TWO = 2"


# -- --base ----------------------------------------------------------------------------------

def test_base_ref_other_than_head(repo: Repo, agent_script: AgentScript, rec_dir: Path, tmp_path: Path) -> None:
    first = repo.git("rev-parse", "HEAD")
    repo.git("tag", "v1")
    repo.write("app/core.py", "VALUE = 2\n")
    head = repo.commit_all("second")
    cmd = make_agent(agent_script, """
        record(core=Path("app/core.py").read_text())
        Path("app/extra.py").write_text("EXTRA = 1\\n")
    """)
    res = start(repo, tmp_path, [task("extra", "Add extra")], "--agent-cmd", cmd, "--base", "v1",
                env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    assert st["base"] == first
    seen = recorded(rec_dir, "extra", 1)
    assert (seen["WSWARM_BASE"], seen["core"]) == (first, "VALUE = 1\n")
    integration = st["integration_branch"]
    assert first_parents(repo, integration)[1:] == [first]
    assert git_rc(repo, "merge-base", "--is-ancestor", head, integration) == 1
    assert repo.show(integration, "app/core.py") == "VALUE = 1"
    assert repo.git("rev-parse", "HEAD") == head
    assert f"based on `v1` (`{first[:12]}`)" in (run_dir(repo, st["run"]) / "pr.md").read_text()


def test_unknown_base_is_rejected_and_nothing_is_created(repo: Repo, agent_script: AgentScript,
                                                         tmp_path: Path) -> None:
    cmd = make_agent(agent_script, "sys.exit(0)\n")
    res = start(repo, tmp_path, [task("x", "X")], "--agent-cmd", cmd, "--base", "no-such-ref")
    assert res.returncode == 2
    assert "'no-such-ref' does not name a commit" in res.stderr
    assert not repo.state_dir.exists()
    assert branches(repo) == ["main"]


# -- scheduling -------------------------------------------------------------------------------------

def test_one_agent_at_a_time_longest_chain_first(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                                 tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        Path(f"app/{tid}.py").write_text("X = 1\\n")
    """)
    plan = [task("solo", "Alone"), task("root", "Root"), task("child", "Child", dependencies=["root"])]
    res = start(repo, tmp_path, plan, "--agent-cmd", cmd, "--agents", "1", env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    evs = [e for e in events(repo, st["run"]) if e["kind"] in ("agent-started", "agent-finished")]
    # Never two agents at once, and `root` (a chain of two) before `solo` (file order otherwise).
    assert [(e["kind"], e["task"]) for e in evs] == [
        ("agent-started", "root"), ("agent-finished", "root"),
        ("agent-started", "solo"), ("agent-finished", "solo"),
        ("agent-started", "child"), ("agent-finished", "child")]
