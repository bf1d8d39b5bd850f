"""What an agent is given, in whole runs: its environment (variables, prompt, task file, feedback,
its own worktree on its own branch, a closed stdin), task text that never reaches a shell, and task
ids of any shape, each with a branch and logs of its own."""

from __future__ import annotations

import textwrap
import urllib.parse
from pathlib import Path

from conftest import Repo, status, task
from swarm_run import AgentScript, agent_logs, attempt_dir, branches, by_id, make_agent, rec_env, recorded, start


# -- the agent's environment -------------------------------------------------------------------

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


# -- task text never reaches a shell -----------------------------------------------------------

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


# -- awkward task ids -------------------------------------------------------------------------

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
