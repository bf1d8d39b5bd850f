"""End-to-end runs of the swarm: the real CLI in a subprocess, real git, real agent processes.

Every agent here is a Python script (the `agent_script` fixture) that records what it saw into a
folder outside the repository (REC_DIR, passed through the environment), so the tests can check
the SPEC §5 contract from the agent's side and the run's result from git, `wswarm status --json`
and the files under .git/wswarm/runs/<run>/.

The fake AWS key of the secret test is assembled at run time: this file holds no literal that the
gate's secret patterns would match.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import (Repo, Result, alive, events, git, idle_slots, run_dir, status, task, worktree_paths, wswarm,
                      write_plan)

AgentScript = Callable[..., str]

# Prepended to every agent: where to record, and a git helper that runs in the agent's cwd.
PRELUDE = '''
import select, subprocess, urllib.parse


def rec_path(suffix="json"):
    tid = urllib.parse.quote(os.environ["WSWARM_TASK_ID"], safe="")
    return Path(os.environ["REC_DIR"]) / f"{tid}-{os.environ['WSWARM_ATTEMPT']}.{suffix}"


def record(**extra):
    data = {k: v for k, v in os.environ.items() if k.startswith("WSWARM_")}
    data["cwd"] = os.getcwd()
    data["GIT_DIR"] = os.environ.get("GIT_DIR")
    data.update(extra)
    rec_path().write_text(json.dumps(data))


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


tid = os.environ["WSWARM_TASK_ID"]
attempt = int(os.environ["WSWARM_ATTEMPT"])
'''


def make_agent(agent_script: AgentScript, body: str, name: str = "agent.py") -> str:
    return agent_script(PRELUDE + textwrap.dedent(body), name=name)


@pytest.fixture
def rec_dir(tmp_path: Path) -> Path:
    path = tmp_path / "rec"
    path.mkdir()
    return path


def rec_env(rec_dir: Path, **extra: str) -> dict[str, str]:
    return {"REC_DIR": str(rec_dir), **extra}


def recorded(rec_dir: Path, task_id: str, attempt: int, suffix: str = "json") -> Any:
    path = rec_dir / f"{urllib.parse.quote(task_id, safe='')}-{attempt}.{suffix}"
    text = path.read_text()
    return json.loads(text) if suffix == "json" else text


def start(repo: Repo, tmp_path: Path, tasks: list[dict[str, Any]], *args: str,
          env: dict[str, str] | None = None) -> Result:
    """`wswarm start --plan` with the plan file outside the repository (the checkout stays clean)."""
    plan = write_plan(tmp_path / "plan.json", tasks)
    return wswarm(repo.path, "start", "--plan", str(plan), *args, env=env)


def by_id(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in st["tasks"]}


def attempt_dir(repo: Repo, st: dict[str, Any], task_id: str, n: int) -> Path:
    return run_dir(repo, st["run"]) / "attempts" / task_id.replace("%", "%25").replace("/", "%2F") / str(n)


def first_parents(repo: Repo, ref: str) -> list[str]:
    return repo.git("rev-list", "--first-parent", ref).splitlines()


def subjects(repo: Repo, ref: str, *extra: str) -> list[str]:
    return repo.git("log", "--format=%s", *extra, ref).splitlines()


def git_rc(repo: Repo, *args: str) -> int:
    return subprocess.run(["git", *args], cwd=repo.path, capture_output=True).returncode


def branches(repo: Repo, prefix: str = "") -> list[str]:
    """Branch names under refs/heads/PREFIX (a prefix, not a glob: `*` would not cross `/`)."""
    out = repo.git("for-each-ref", "--format=%(refname:short)", f"refs/heads/{prefix}")
    return sorted(out.splitlines())


# -- 1. parallel tasks ---------------------------------------------------------------------------

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


# -- 2. dependencies ------------------------------------------------------------------------------

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


# -- 3. the agent's environment -------------------------------------------------------------------

ENV_AGENT = """
    readable, _, _ = select.select([sys.stdin], [], [], 5) if sys.stdin else ([], [], [])
    stdin = sys.stdin.read() if readable else "<blocked>"
    feedback = os.environ.get("WSWARM_FEEDBACK")
    record(stdin=stdin, toplevel=git("rev-parse", "--show-toplevel"), head=git("symbolic-ref", "HEAD"),
           prompt_text=Path(os.environ["WSWARM_PROMPT"]).read_text(),
           task_json=json.loads(Path(os.environ["WSWARM_TASK_JSON"]).read_text()),
           feedback_text=Path(feedback).read_text() if feedback else None)
    if attempt == 1:
        print("first try output: giving up")
        sys.exit(1)
    Path("app/env.py").write_text("OK = True\\n")
"""


def test_agent_environment_contract(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                    tmp_path: Path) -> None:
    cmd = make_agent(agent_script, ENV_AGENT)
    base = repo.git("rev-parse", "HEAD")
    res = start(repo, tmp_path, [task("env-task", "Check the environment", type="backend")],
                "--agent-cmd", cmd, env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    assert by_id(st)["env-task"]["attempts"] == 2
    one, two = recorded(rec_dir, "env-task", 1), recorded(rec_dir, "env-task", 2)
    for n, env in ((1, one), (2, two)):
        adir = attempt_dir(repo, st, "env-task", n)
        assert env["WSWARM_RUN_ID"] == st["run"]
        assert env["WSWARM_TASK_ID"] == "env-task"
        assert env["WSWARM_TASK_TYPE"] == "backend"
        assert env["WSWARM_TASK_DESCRIPTION"] == "Check the environment"
        assert env["WSWARM_ATTEMPT"] == str(n)
        assert env["WSWARM_BASE"] == base     # nothing merged in between
        assert env["WSWARM_PROMPT"] == str(adir / "prompt.md")
        assert env["prompt_text"] == (adir / "prompt.md").read_text()
        assert "# Task `env-task` (backend)\n\nCheck the environment" in env["prompt_text"]
        assert env["WSWARM_TASK_JSON"] == str(adir / "task.json")
        assert env["task_json"]["task"]["id"] == "env-task" and env["task_json"]["attempt"] == n
        # cwd is the attempt's own worktree (a slot), on its own branch, never the user's checkout.
        worktree = Path(env["cwd"])
        assert worktree.parent.resolve() == (repo.state_dir / "slots").resolve() and worktree.name.startswith("slot-")
        assert Path(env["toplevel"]).resolve() == worktree.resolve()
        assert env["head"] == f"refs/heads/wswarm/{st['run']}/tasks/env-task/{n}"
        assert env["GIT_DIR"] is None
        # stdin is closed: reading returns EOF at once.
        assert env["stdin"] == ""
    assert "WSWARM_FEEDBACK" not in one
    assert one["feedback_text"] is None
    assert two["WSWARM_FEEDBACK"] == str(attempt_dir(repo, st, "env-task", 2) / "feedback.txt")
    assert two["feedback_text"].startswith("the agent exited with status 1\n")
    assert "first try output: giving up" in two["feedback_text"]
    assert "# Your previous attempt was sent back" in two["prompt_text"]
    assert "first try output: giving up" in two["prompt_text"]


def test_inherited_wswarm_variables_do_not_leak_into_attempt_one(repo: Repo, agent_script: AgentScript,
                                                                 rec_dir: Path, tmp_path: Path) -> None:
    # wswarm started from inside another run's agent or gate check inherits its WSWARM_* variables.
    stale = tmp_path / "stale-feedback.txt"
    stale.write_text("feedback from some other run\n")
    cmd = make_agent(agent_script, """
        record()
        Path("app/x.py").write_text("X = 1\\n")
    """)
    res = start(repo, tmp_path, [task("x", "Add x")], "--agent-cmd", cmd,
                env=rec_env(rec_dir, WSWARM_FEEDBACK=str(stale)))
    assert res.returncode == 0, res.stderr
    assert "WSWARM_FEEDBACK" not in recorded(rec_dir, "x", 1)


# -- 4. task text never reaches a shell -----------------------------------------------------------

def test_shell_metacharacters_in_task_text_never_execute(repo: Repo, agent_script: AgentScript,
                                                         rec_dir: Path, tmp_path: Path) -> None:
    m = [tmp_path / f"PWNED_{i}" for i in range(5)]
    description = (f"Fix $(touch {m[0]}); `touch {m[1]}` \"; touch {m[2]}; echo \" ' && touch {m[3]} '"
                   f" | touch {m[4]} $HOME")
    # The agent also creates a file whose *name* is a shell snippet; an `affected` gate check gets
    # the changed paths as arguments, so it must see the name verbatim and run nothing.
    evil_name = "$(touch PWNED_A);touch PWNED_B;`touch PWNED_C`.txt"
    repo.write("wswarm.toml", textwrap.dedent(f"""
        [[gate.checks]]
        name = "args"
        affected = true
        run = "printf '%s\\\\n' > {rec_dir / 'gate-args.txt'}"

        [[gate.checks]]
        name = "nothing-ran"
        run = "test ! -e PWNED_A && test ! -e PWNED_B && test ! -e PWNED_C"
    """))
    cmd = make_agent(agent_script, f"""
        record(prompt=Path(os.environ["WSWARM_PROMPT"]).read_text())
        Path({evil_name!r}).write_text("harmless\\n")
    """)
    plan = [task("inj", description, prompt=f"Also $(touch {m[0]}) and `touch {m[1]}`")]
    res = start(repo, tmp_path, plan, "--agent-cmd", cmd, env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    for marker in m:
        assert not marker.exists(), marker
    seen = recorded(rec_dir, "inj", 1)
    assert seen["WSWARM_TASK_DESCRIPTION"] == description
    assert f"# Task `inj` (general)\n\n{description}" in seen["prompt"]
    assert f"Also $(touch {m[0]}) and `touch {m[1]}`" in seen["prompt"]
    assert (rec_dir / "gate-args.txt").read_text() == "./" + evil_name + "\n"
    st = status(repo)
    branch = by_id(st)["inj"]["branch"]
    assert by_id(st)["inj"]["status"] == "merged"
    # The leftover commit carries the exact text as its message.
    assert repo.git("log", "-1", "--format=%B", branch) == f"inj: {description}"
    assert repo.show(st["integration_branch"], evil_name) == "harmless"
    for name in ("PWNED_A", "PWNED_B", "PWNED_C"):
        assert not (repo.path / name).exists()
        assert repo.git("ls-tree", "--name-only", st["integration_branch"], name) == ""


# -- 5. conflicts ---------------------------------------------------------------------------------

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


# -- 6. gate failure fixed from feedback ----------------------------------------------------------

def test_gate_failure_is_fixed_from_feedback(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                             tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        feedback = os.environ.get("WSWARM_FEEDBACK")
        text = Path(feedback).read_text() if feedback else ""
        record(feedback_text=text or None)
        if attempt == 1:
            Path("app/core.py").write_text("VALUE = 2  # TODO tidy\\n")
        elif "TODO left in app/core.py" in text:
            Path("app/core.py").write_text("VALUE = 2\\n")
            print("removed the TODO the gate complained about")
        else:
            sys.exit(5)
    """)
    # A committed wswarm.toml: the gate check and the agent command both come from it.
    repo.write("wswarm.toml", textwrap.dedent(f"""
        [agents]
        command = {json.dumps(cmd)}

        [[gate.checks]]
        name = "no-todo"
        kind = "lint"
        run = "if grep -n TODO app/core.py; then echo 'TODO left in app/core.py'; exit 1; fi"
    """))
    repo.commit_all("configure wswarm")
    res = start(repo, tmp_path, [task("fix", "Set VALUE to 2", files=["app/core.py"])], env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    assert "uncommitted changes" not in res.stderr
    st = status(repo)
    assert (by_id(st)["fix"]["status"], by_id(st)["fix"]["attempts"]) == ("merged", 2)
    gate1 = json.loads((attempt_dir(repo, st, "fix", 1) / "gate.json").read_text())
    assert gate1["passed"] is False
    check = next(c for c in gate1["checks"] if c["name"] == "no-todo")
    assert (check["kind"], check["status"], check["note"]) == ("lint", "fail", "exit 1")
    assert check["output"] == "1:VALUE = 2  # TODO tidy\nTODO left in app/core.py"
    assert [c["status"] for c in gate1["checks"] if c["kind"] == "builtin"] == ["pass"] * 4
    gate2 = json.loads((attempt_dir(repo, st, "fix", 2) / "gate.json").read_text())
    assert gate2["passed"] is True
    assert {c["name"]: c["status"] for c in gate2["checks"]}["no-todo"] == "pass"
    feedback = recorded(rec_dir, "fix", 2)["feedback_text"]
    assert feedback == (attempt_dir(repo, st, "fix", 2) / "feedback.txt").read_text()
    assert feedback.startswith("gate FAILED: no-todo ✗")
    assert "--- no-todo (fail) ---\n1:VALUE = 2  # TODO tidy\nTODO left in app/core.py" in feedback
    assert recorded(rec_dir, "fix", 1)["feedback_text"] is None
    kinds = [(e["kind"], e.get("attempt")) for e in events(repo, st["run"]) if e.get("task") == "fix"]
    assert ("gate-failed", 1) in kinds and ("merged", 2) in kinds
    assert repo.show(st["integration_branch"], "app/core.py") == "VALUE = 2"
    pr = (run_dir(repo, st["run"]) / "pr.md").read_text()
    assert "- `fix` attempt 1: gate-failed — gate FAILED: no-todo ✗" in pr
    assert "clean-run ratio **0/1** (0%)" in pr


# -- 7. secrets -----------------------------------------------------------------------------------

def _fake_aws_key() -> str:
    return "AK" + "IA" + "QX7RZ2LM" + "4N8PB6TW"


def test_secret_fails_the_gate_and_never_reaches_integration(repo: Repo, agent_script: AgentScript,
                                                             rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        if tid == "leak":
            key = "AK" + "IA" + "QX7RZ2LM" + "4N8PB6TW"
            Path("config").mkdir(exist_ok=True)
            Path("config/keys.py").write_text(f'AWS_ACCESS_KEY_ID = "{key}"\\n')
            print("wrote config/keys.py")
        else:
            Path(f"app/{tid}.py").write_text("OK = 1\\n")
    """)
    plan = [task("leak", "Add the deploy config", files=["config/*"]),
            task("dep1", "Use the config", dependencies=["leak"]),
            task("dep2", "Use dep1", dependencies=["dep1"]),
            task("ok", "Unrelated work")]
    res = start(repo, tmp_path, plan, "--agent-cmd", cmd, "--max-attempts", "2", env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    key = _fake_aws_key()
    status_res = wswarm(repo.path, "status", "--json")
    st = status_res.json()
    tasks = by_id(st)
    assert tasks["leak"]["status"] == "failed" and tasks["leak"]["attempts"] == 2
    assert tasks["leak"]["reason"].startswith("gate FAILED: secrets ✗")
    assert tasks["leak"]["reason"].endswith("(after 2 attempts)")
    assert (tasks["dep1"]["status"], tasks["dep1"]["reason"]) == ("blocked", "depends on 'leak', which failed")
    assert (tasks["dep2"]["status"], tasks["dep2"]["reason"]) == ("blocked", "depends on 'dep1', which blocked")
    assert (tasks["dep1"]["attempts"], tasks["dep2"]["attempts"]) == (0, 0)
    assert tasks["ok"]["status"] == "merged"
    gate = json.loads((attempt_dir(repo, st, "leak", 1) / "gate.json").read_text())
    secrets = next(c for c in gate["checks"] if c["name"] == "secrets")
    assert (secrets["status"], secrets["note"]) == ("fail", "1 finding")
    assert secrets["output"] == "config/keys.py:1: possible AWS access key id: AKIA…"
    feedback = (attempt_dir(repo, st, "leak", 2) / "feedback.txt").read_text()
    assert "config/keys.py:1: possible AWS access key id: AKIA…" in feedback
    # The key itself is nowhere in what wswarm wrote, printed, or merged.
    assert key not in status_res.stdout
    assert key not in res.stdout + res.stderr
    for path in run_dir(repo, st["run"]).rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    integration = st["integration_branch"]
    assert repo.git("ls-tree", "-r", "--name-only", integration).splitlines() == [
        "README.md", "app/__init__.py", "app/core.py", "app/ok.py"]
    assert key not in repo.git("log", "-p", integration)
    for n in (1, 2):
        leaked = f"wswarm/{st['run']}/tasks/leak/{n}"
        assert git_rc(repo, "merge-base", "--is-ancestor", leaked, integration) == 1


def test_secret_committed_then_removed_never_reaches_integration(repo: Repo, agent_script: AgentScript,
                                                                 rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        key = "AK" + "IA" + "QX7RZ2LM" + "4N8PB6TW"
        Path("app/keys.py").write_text(f'AWS_ACCESS_KEY_ID = "{key}"\\n')
        git("add", "-A")
        git("commit", "-q", "-m", "try with the real key")
        Path("app/keys.py").unlink()
        Path("app/deploy.py").write_text("KEY = None  # read from the environment\\n")
    """)
    res = start(repo, tmp_path, [task("sneaky", "Add the deploy code")], "--agent-cmd", cmd,
                "--max-attempts", "1", env=rec_env(rec_dir))
    st = status(repo)
    assert _fake_aws_key() not in repo.git("log", "-p", st["integration_branch"])
    assert res.returncode == 1


# -- 8. permanent agent failure ---------------------------------------------------------------------

def test_failed_task_blocks_dependents_while_others_merge(repo: Repo, agent_script: AgentScript,
                                                          rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        Path(f"app/{tid}.py").write_text("OK = 1\\n")
        print(f"wrote app/{tid}.py")
    """)
    broken = make_agent(agent_script, """
        print("cannot do this")
        sys.exit(3)
    """, name="broken.py")
    plan = [task("broken", "Do the impossible", command=broken),
            task("mid", "Build on it", dependencies=["broken"]),
            task("leaf", "Build on mid", dependencies=["mid"]),
            task("solo", "Independent work")]
    res = start(repo, tmp_path, plan, "--agent-cmd", cmd, "--max-attempts", "2", env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    st = status(repo)
    run = st["run"]
    assert res.stdout == str(run_dir(repo, st["run"]) / "pr.md") + "\n"
    assert f"run {run}: finished with failed or blocked tasks" in res.stderr
    tasks = by_id(st)
    assert {tid: (t["status"], t["attempts"], t["reason"]) for tid, t in tasks.items()} == {
        "broken": ("failed", 2, "the agent exited with status 3 (after 2 attempts)"),
        "mid": ("blocked", 0, "depends on 'broken', which failed"),
        "leaf": ("blocked", 0, "depends on 'mid', which blocked"),
        "solo": ("merged", 1, None),
    }
    blocked = [(e["task"], e["reason"]) for e in events(repo, st["run"]) if e["kind"] == "blocked"]
    assert blocked == [("mid", "depends on 'broken', which failed"), ("leaf", "depends on 'mid', which blocked")]
    assert (attempt_dir(repo, st, "broken", 2) / "agent.log").read_text() == "cannot do this\n"
    started = {e["task"] for e in events(repo, st["run"]) if e["kind"] == "attempt-started"}
    assert started == {"broken", "solo"}
    # The failed task's last worktree is kept, on its branch; the merged task's went back to the
    # pool of slots: idle, detached, clean.
    kept = Path(tasks["broken"]["worktree"])
    assert kept.parent == repo.state_dir / "slots" and kept.is_dir()
    assert git(kept, "symbolic-ref", "HEAD") == f"refs/heads/wswarm/{run}/tasks/broken/2"
    idle_slots(repo, kept=kept)
    assert not (repo.state_dir / "worktrees").exists() or not any((repo.state_dir / "worktrees").iterdir())
    assert repo.show(st["integration_branch"], "app/solo.py") == "OK = 1"
    pr = (run_dir(repo, st["run"]) / "pr.md").read_text()
    assert "1 of 4 tasks merged; clean-run ratio **1/4** (25%) merged on their first attempt." in pr
    assert "| `broken` | general | ❌ failed | 2 | 0 | +0 −0 |" in pr
    assert "| `mid` | general | ⛔ blocked | 0 | 0 | +0 −0 |" in pr
    assert "| `solo` | general | ✅ merged | 1 | 1 | +1 −0 |" in pr
    assert "- `broken` attempt 1: agent-failed — the agent exited with status 3" in pr
    assert (f"## Not merged\n\n"
            f"- `broken` failed: the agent exited with status 3 (after 2 attempts) "
            f"(kept for inspection: `wswarm/{run}/tasks/broken/2`)\n"
            f"- `mid` blocked: depends on 'broken', which failed\n"
            f"- `leaf` blocked: depends on 'mid', which blocked\n") in pr


# -- 9. timeouts ------------------------------------------------------------------------------------

def test_timeout_kills_the_agent_and_its_children(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                                  tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        child = subprocess.Popen(["sleep", "60"])
        rec_path("pids").write_text(f"{os.getpid()} {child.pid}")
        print("started a child", flush=True)
        time.sleep(30)
        Path("app/late.py").write_text("LATE = 1\\n")
    """)
    started = time.monotonic()
    res = start(repo, tmp_path, [task("slow", "Take forever")], "--agent-cmd", cmd, "--timeout", "2",
                "--max-attempts", "1", env=rec_env(rec_dir))
    elapsed = time.monotonic() - started
    assert res.returncode == 1, res.stderr
    assert elapsed < 20
    st = status(repo)
    slow = by_id(st)["slow"]
    assert (slow["status"], slow["reason"]) == (
        "failed", "the agent passed its timeout of 2s and was killed (after 1 attempt)")
    assert [e["kind"] for e in events(repo, st["run"]) if e.get("task") == "slow"][-2:] == ["timeout", "failed"]
    assert (attempt_dir(repo, st, "slow", 1) / "agent.log").read_text() == "started a child\n"
    pids = [int(p) for p in recorded(rec_dir, "slow", 1, "pids").split()]
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [alive(p) for p in pids] == [False, False]
    assert repo.git("rev-parse", st["integration_branch"]) == st["base"]


# -- 10. no-op attempts -----------------------------------------------------------------------------

def test_noop_attempt_is_requeued_then_failed(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                              tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        feedback = os.environ.get("WSWARM_FEEDBACK")
        record(feedback_text=Path(feedback).read_text() if feedback else None)
        print("looked around; nothing to do")
    """)
    res = start(repo, tmp_path, [task("idle", "Do nothing at all"), task("after", "Needs idle",
                                                                         dependencies=["idle"])],
                "--agent-cmd", cmd, "--max-attempts", "2", env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    st = status(repo)
    tasks = by_id(st)
    assert (tasks["idle"]["status"], tasks["idle"]["attempts"]) == ("failed", 2)
    assert tasks["idle"]["reason"] == "no-op: the agent changed nothing (after 2 attempts)"
    assert (tasks["after"]["status"], tasks["after"]["reason"]) == ("blocked", "depends on 'idle', which failed")
    assert recorded(rec_dir, "idle", 1)["feedback_text"] is None
    assert recorded(rec_dir, "idle", 2)["feedback_text"] == (
        "Your previous attempt changed no files. The task needs changes to the repository.")
    assert [e["attempt"] for e in events(repo, st["run"]) if e["kind"] == "no-op"] == [1, 2]
    assert repo.git("rev-parse", st["integration_branch"]) == st["base"]
    assert not any(e["kind"] == "merged" for e in events(repo, st["run"]))


def test_empty_commit_is_a_noop(repo: Repo, agent_script: AgentScript, rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        git("commit", "-q", "--allow-empty", "-m", "looked, changed nothing")
    """)
    res = start(repo, tmp_path, [task("empty", "Do nothing, but commit")], "--agent-cmd", cmd,
                "--max-attempts", "1", env=rec_env(rec_dir))
    st = status(repo)
    assert repo.git("rev-parse", st["integration_branch"]) == st["base"]
    assert by_id(st)["empty"]["status"] == "failed"
    assert "no-op" in by_id(st)["empty"]["reason"]
    assert res.returncode == 1


# -- 11. agents that commit -------------------------------------------------------------------------

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


# -- 12. agents that leave their branch ----------------------------------------------------------

def test_agent_that_switches_branch_fails(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                          tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        git("checkout", "-q", "-b", "other")
        Path("app/stray.py").write_text("STRAY = 1\\n")
    """)
    res = start(repo, tmp_path, [task("wander", "Stay put")], "--agent-cmd", cmd, "--max-attempts", "1",
                env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    st = status(repo)
    wander = by_id(st)["wander"]
    assert wander["status"] == "failed"
    assert wander["reason"] == (f"the agent left its branch (HEAD is refs/heads/other, expected "
                                f"wswarm/{st['run']}/tasks/wander/1) (after 1 attempt)")
    assert repo.git("rev-parse", st["integration_branch"]) == st["base"]
    # Nothing was committed for it, on either branch.
    assert repo.git("rev-parse", "other") == st["base"]
    assert repo.git("rev-parse", wander["branch"]) == st["base"]


def test_agent_that_rewrites_history_fails(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                           tmp_path: Path) -> None:
    repo.write("app/core.py", "VALUE = 2\n")
    base = repo.commit_all("second")
    cmd = make_agent(agent_script, """
        git("reset", "-q", "--hard", "HEAD~1")
        Path("app/other.py").write_text("OTHER = 1\\n")
    """)
    res = start(repo, tmp_path, [task("rewrite", "Rewrite history")], "--agent-cmd", cmd, "--max-attempts", "1",
                env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    st = status(repo)
    assert by_id(st)["rewrite"]["reason"] == ("the task branch no longer contains its starting commit "
                                              "(after 1 attempt)")
    assert repo.git("rev-parse", st["integration_branch"]) == base


def test_agent_that_deletes_its_worktree_fails_with_a_clear_reason(repo: Repo, agent_script: AgentScript,
                                                                   rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        import shutil
        shutil.rmtree(os.getcwd())
    """)
    res = start(repo, tmp_path, [task("vandal", "Delete everything")], "--agent-cmd", cmd,
                "--max-attempts", "1", env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    st = status(repo)
    assert by_id(st)["vandal"]["reason"] == "the agent deleted its worktree (after 1 attempt)"


# -- 13. the user's checkout is never touched ---------------------------------------------------

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


# -- 14. awkward task ids -------------------------------------------------------------------------

def test_awkward_task_ids_get_distinct_branches(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                                tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        record()
        name = urllib.parse.quote(tid, safe="")
        Path("out").mkdir(exist_ok=True)
        Path(f"out/{name}.txt").write_text(tid + "\\n")
        print(f"task {tid} wrote out/{name}.txt")
    """)
    ids = ["a", "a/b", "a/b/c", "ref%2Fx", "UPPER.dots_1"]
    # In parallel, so that `a/b` and `a/b/c` get their branches and worktrees at the same time.
    res = start(repo, tmp_path, [task(i, f"Write the file of {i}") for i in ids], "--agent-cmd", cmd,
                "--agents", "5", env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    run = st["run"]
    tasks = by_id(st)
    assert [t["id"] for t in st["tasks"]] == ids
    assert [(t["status"], t["attempts"], t["reason"]) for t in st["tasks"]] == [("merged", 1, None)] * 5
    task_branches = {i: tasks[i]["branch"] for i in ids}
    assert task_branches == {"a": f"wswarm/{run}/tasks/a/1", "a/b": f"wswarm/{run}/tasks/a%2Fb/1",
                        "a/b/c": f"wswarm/{run}/tasks/a%2Fb%2Fc/1", "ref%2Fx": f"wswarm/{run}/tasks/ref%252Fx/1",
                        "UPPER.dots_1": f"wswarm/{run}/tasks/UPPER.dots_1/1"}
    assert branches(repo, f"wswarm/{run}/tasks/") == sorted(task_branches.values())
    integration = st["integration_branch"]
    for i in ids:
        assert recorded(rec_dir, i, 1)["WSWARM_TASK_ID"] == i
        assert repo.show(integration, f"out/{urllib.parse.quote(i, safe='')}.txt") == i
        assert repo.git("log", "-1", "--format=%s", tasks[i]["merge_commit"]) == \
            f"wswarm: merge {i} — Write the file of {i}"
        assert repo.git("log", "-1", "--format=%s", task_branches[i]) == f"{i}: Write the file of {i}"
    assert len({tasks[i]["merge_commit"] for i in ids}) == 5
    # Logs are found per task, and `a` is not confused with `a/b`.
    assert agent_logs(repo, "a/b") == "==> attempt 1: agent.log <==\ntask a/b wrote out/a%2Fb.txt\n"
    assert agent_logs(repo, "ref%2Fx") == "==> attempt 1: agent.log <==\ntask ref%2Fx wrote out/ref%252Fx.txt\n"


def agent_logs(repo: Repo, task_id: str) -> str:
    """What `wswarm logs` prints of the agent's logs: everything before the first attempt's gate verdict."""
    res = wswarm(repo.path, "logs", task_id)
    assert res.returncode == 0, res.stderr
    return res.stdout.split("\n==> attempt 1: gate <==")[0] + "\n"


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


# -- 15. clean ------------------------------------------------------------------------------------

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


# -- 16. status, logs, pr -------------------------------------------------------------------------

def test_status_json_logs_and_pr(repo: Repo, agent_script: AgentScript, rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        print("hello from the agent")
        print("second line")
        Path(f"app/{tid}.py").write_text("X = 1\\n")
    """)
    base = repo.git("rev-parse", "HEAD")
    res = start(repo, tmp_path, [task("hello", "Say hello", type="docs"), task("bye", "Say bye",
                                                                               dependencies=["hello"])],
                "--agent-cmd", cmd, env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    run = st["run"]
    assert {"run", "state", "base", "integration_branch", "tasks", "cost_usd"} <= set(st)
    assert (st["state"], st["base"], st["integration_branch"], st["cost_usd"]) == (
        "finished", base, f"wswarm/{run}/integration", 0)
    assert isinstance(st["cost_usd"], (int, float))
    assert run_dir(repo, st["run"]).is_dir()
    for t in st["tasks"]:
        assert {"id", "status", "attempts", "branch", "reason"} <= set(t)
    assert [{k: t[k] for k in ("id", "status", "attempts", "branch", "reason")} for t in st["tasks"]] == [
        {"id": "hello", "status": "merged", "attempts": 1, "branch": f"wswarm/{run}/tasks/hello/1", "reason": None},
        {"id": "bye", "status": "merged", "attempts": 1, "branch": f"wswarm/{run}/tasks/bye/1", "reason": None},
    ]
    assert agent_logs(repo, "hello") == "==> attempt 1: agent.log <==\nhello from the agent\nsecond line\n"
    assert (attempt_dir(repo, st, "hello", 1) / "agent.log").read_text() == "hello from the agent\nsecond line\n"
    pr_md = (run_dir(repo, st["run"]) / "pr.md").read_text()
    assert res.stdout == str(run_dir(repo, st["run"]) / "pr.md") + "\n"
    pr = wswarm(repo.path, "pr")
    assert pr.returncode == 0, pr.stderr
    assert pr.stdout.rstrip("\n") == pr_md.rstrip("\n")
    assert pr_md.startswith("# wswarm: plan (2/2 tasks)\n")
    assert "| `hello` | docs | ✅ merged | 1 | 1 | +1 −0 |" in pr_md
    assert "### `hello` — Say hello\n\n```\nhello from the agent\nsecond line\n```" in pr_md
    # Selecting the run explicitly gives the same data.
    assert wswarm(repo.path, "status", run, "--json").json() == st
    unknown = wswarm(repo.path, "logs", "nope")
    assert unknown.returncode == 2
    assert f"run {run} has no task 'nope'" in unknown.stderr


def test_pr_and_logs_print_text_verbatim(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                         tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        print("kept rows[:x:] as is")
        print("col1\\tcol2")
        Path("app/text.py").write_text("X = 1\\n")
    """)
    res = start(repo, tmp_path, [task("text", "Handle the :x: and :thumbs_up: cases")], "--agent-cmd", cmd,
                env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    pr_md = (run_dir(repo, st["run"]) / "pr.md").read_text()
    assert wswarm(repo.path, "pr").stdout.rstrip("\n") == pr_md.rstrip("\n")
    log = (attempt_dir(repo, st, "text", 1) / "agent.log").read_text()
    assert agent_logs(repo, "text") == "==> attempt 1: agent.log <==\n" + log


# -- 17. --base ----------------------------------------------------------------------------------

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
