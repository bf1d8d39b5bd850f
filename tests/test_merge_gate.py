"""The merge-result gate: test what the train built, bisect to the merge that broke it, eject it."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from conftest import Repo, events, idle_slots, status, wswarm, write_plan
from worktree_swarm.train.result_gate import first_bad

# Imports every module of the package and calls its main(): green on each branch alone, red when
# one branch renames what another one starts to use.
CHECK = """
import importlib, pkgutil, app
for m in pkgutil.iter_modules(app.__path__):
    mod = importlib.import_module("app." + m.name)
    if hasattr(mod, "main"):
        mod.main()
"""

AGENT = """
tid = os.environ["WSWARM_TASK_ID"]
feedback = os.environ.get("WSWARM_FEEDBACK")
if tid == "rename":
    Path("app/lib.py").write_text("def g():\\n    return 1\\n")
elif tid == "use":
    # Finish once "rename" is merged, so the train is: rename, use.
    import subprocess
    branch = "wswarm/" + os.environ["WSWARM_RUN_ID"] + "/integration"
    deadline = time.time() + 60
    while "wswarm: merge rename" not in subprocess.run(["git", "log", "--format=%s", branch], capture_output=True,
                                                       text=True).stdout:
        assert time.time() < deadline, "rename was never merged"
        time.sleep(0.05)
    name = "g as f" if feedback else "f"
    Path("app/use.py").write_text(f"from app.lib import {name}\\n\\ndef main():\\n    return f()\\n")
else:
    Path(tid + ".txt").write_text(tid + "\\n")
print(tid, "attempt", os.environ["WSWARM_ATTEMPT"], "feedback" if feedback else "")
"""


def setup(repo: Repo, check: str, tasks: list[dict[str, object]], *, cache: bool = True) -> None:
    repo.write("app/lib.py", "def f():\n    return 1\n")
    repo.write("check.py", textwrap.dedent(CHECK))
    repo.write("wswarm.toml", f"[gate]\ncache = {str(cache).lower()}\n"
               f'[[gate.checks]]\nname = "integration"\nkind = "tests"\nrun = {json.dumps(check)}\n')
    repo.commit_all("package with a check")
    write_plan(repo.path / "plan.json", tasks)


def test_a_semantic_conflict_is_bisected_ejected_and_reworked(repo: Repo, agent_script: object) -> None:
    import sys
    setup(repo, f"{sys.executable} check.py", [{"id": "rename", "description": "rename f to g"},
                                               {"id": "use", "description": "use f"},
                                               {"id": "notes", "description": "write notes"}])
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent_script(AGENT))  # type: ignore[operator]
    assert res.returncode == 0, res.stderr
    st = status(repo)
    assert st["merge_gate"] == "passed"
    tasks = {t["id"]: t for t in st["tasks"]}
    assert (tasks["rename"]["status"], tasks["rename"]["attempts"]) == ("merged", 1)
    assert (tasks["use"]["status"], tasks["use"]["attempts"]) == ("merged", 2)
    # The two innocent tasks stayed merged: neither ran again.
    assert (tasks["notes"]["status"], tasks["notes"]["attempts"]) == ("merged", 1)
    ev = events(repo)
    failed = [e for e in ev if e["kind"] == "merge-gate-failed"]
    assert len(failed) == 1 and failed[0]["guilty"] == "use"
    assert [(e["task"], e["attempt"]) for e in ev if e["kind"] == "ejected"] == [("use", 1)]
    assert [e["kind"] for e in ev if e["kind"].startswith("merge-gate")] == [
        "merge-gate-started", "merge-gate-failed", "merge-gate-started", "merge-gate-passed"]
    branch = str(st["integration_branch"])
    # The ejected attempt's work is not on the branch; the reworked one is, after "rename".
    first_use = repo.git("rev-parse", f"wswarm/{st['run']}/tasks/use/1")
    assert subprocess.run(["git", "merge-base", "--is-ancestor", first_use, branch], cwd=repo.path).returncode == 1
    assert repo.show(branch, "app/use.py").startswith("from app.lib import g as f")
    subjects = repo.git("log", "--first-parent", "--format=%s", branch).splitlines()
    assert subjects[0] == "wswarm: merge use — use f"
    assert sorted(subjects[1:3]) == ["wswarm: merge notes — write notes", "wswarm: merge rename — rename f to g"]
    assert repo.show(branch, "notes.txt") == "notes"
    feedback = (repo.state_dir / "runs" / str(st["run"]) / "attempts" / "use" / "2" / "feedback.txt").read_text()
    assert "ejected: the merge result failed the gate after this merge" in feedback
    assert "ImportError" in feedback
    pr = (repo.state_dir / "runs" / str(st["run"]) / "pr.md").read_text()
    assert "- `use` attempt 1: ejected — ejected: the merge result failed the gate after this merge" in pr
    assert "On the integration head: gate passed: integration ✓" in pr
    # No probe worktree is left behind: whatever else is listed is an idle slot.
    idle_slots(repo)


def test_a_base_that_already_fails_blames_nobody(repo: Repo, agent_script: object) -> None:
    setup(repo, "exit 1", [{"id": "one", "description": "one"}, {"id": "two", "description": "two"}])
    # Per-branch checks would fail too; only the merge result is judged here, so the branch check is
    # told apart by WSWARM_TASK_ID (set for task branches, not for the merge result).
    repo.write("wswarm.toml", '[gate]\ncache = false\n[[gate.checks]]\nname = "integration"\n'
               'run = "test -n \\"$WSWARM_TASK_ID\\""\n')
    repo.commit_all("only the merge result fails")
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent_script(AGENT))  # type: ignore[operator]
    assert res.returncode == 1, res.stderr
    st = status(repo)
    assert st["merge_gate"] == "failed"
    assert [t["status"] for t in st["tasks"]] == ["merged", "merged"]
    ev = events(repo)
    assert [e.get("reason") for e in ev if e["kind"] == "merge-gate-failed"] == [
        "the base fails these checks too; nothing to blame"]
    assert not [e for e in ev if e["kind"] == "ejected"]
    assert "## Merge-result gate" in (repo.state_dir / "runs" / str(st["run"]) / "pr.md").read_text()


def test_a_guilty_task_takes_its_merged_dependents_with_it(repo: Repo, agent_script: object) -> None:
    # A check that only the merge result runs (no WSWARM_TASK_ID) and that fails while bad.txt is in
    # the tree: "bad" is guilty; "after-bad" depends on it and must be rebuilt too. The check reads
    # more than the tree, so results must not be remembered by tree: `[gate] cache = false`.
    check = 'test -n "$WSWARM_TASK_ID" || ! test -f bad.txt'
    agent = """
tid = os.environ["WSWARM_TASK_ID"]
if tid == "bad" and os.environ.get("WSWARM_FEEDBACK"):
    Path("fixed.txt").write_text("fixed\\n")
else:
    Path(tid + ".txt").write_text(tid + "\\n")
"""
    setup(repo, check, [{"id": "good", "description": "good"}, {"id": "bad", "description": "bad"},
                        {"id": "after-bad", "description": "after", "dependencies": ["bad"]}], cache=False)
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agents", "1",
                 "--agent-cmd", agent_script(agent))  # type: ignore[operator]
    assert res.returncode == 0, res.stderr
    st = status(repo)
    tasks = {t["id"]: (t["status"], t["attempts"]) for t in st["tasks"]}
    assert tasks == {"good": ("merged", 2), "bad": ("merged", 2), "after-bad": ("merged", 2)}
    # bad.txt is in no commit reachable from the integration branch: the ejected work is gone.
    # With one agent, "good" and "after-bad" both started on top of "bad": both are redone.
    ejected = [(e["task"], e["reason"]) for e in events(repo) if e["kind"] == "ejected"]
    assert ejected == [("bad", "ejected: the merge result failed the gate after this merge"),
                       ("good", "ejected: this attempt started on top of 'bad', which was ejected"),
                       ("after-bad", "ejected: this attempt started on top of 'bad', which was ejected")]
    branch = str(st["integration_branch"])
    assert repo.git("log", "--format=%H", branch, "--", "bad.txt") == ""
    assert sorted(repo.git("ls-tree", "--name-only", branch).split()) == [
        "README.md", "after-bad.txt", "app", "check.py", "fixed.txt", "good.txt", "wswarm.toml"]


@pytest.mark.parametrize("count", range(1, 9))
def test_first_bad_finds_the_first_failing_merge(count: int) -> None:
    for culprit in range(1, count + 1):
        probes: list[int] = []

        def passes(i: int) -> bool:
            probes.append(i)
            return i < culprit
        assert first_bad(count, passes) == culprit
        assert len(probes) <= max(1, count.bit_length())


def test_a_merge_result_whose_checks_could_not_run_is_unverified_not_passed(repo: Repo, agent_script: object) -> None:
    # The setup step refuses a tree holding `marker.txt`: each task's own worktree starts without it,
    # but the merged result has it, so there the check cannot run at all.
    repo.write("wswarm.toml", '[worktree]\nsetup = "test ! -f marker.txt"\n'
               '[[gate.checks]]\nname = "tests"\nkind = "tests"\nrun = "true"\n')
    repo.commit_all("config")
    # Two tasks, so the merged tree is one no branch had (a tree already checked is not re-checked).
    write_plan(repo.path / "plan.json", [{"id": "marker", "description": "add the marker"},
                                         {"id": "other", "description": "add another file"}])
    agent = agent_script('Path(os.environ["WSWARM_TASK_ID"] + ".txt").write_text("x\\n")\n')  # type: ignore[operator]
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent)
    assert res.returncode == 0, res.stderr
    st = status(repo)
    assert st["merge_gate"] == "unverified"
    assert [t["status"] for t in st["tasks"]] == ["merged", "merged"]
    assert "merge-gate-unverified" in [e["kind"] for e in events(repo)]
    # Each branch's own gate is one event: it passed (its setup ran before the marker existed).
    gates = [e for e in events(repo) if e["kind"] == "gate-finished"]
    assert sorted(e["task"] for e in gates) == ["marker", "other"]
    assert {e["verdict"] for e in gates} == {"passed"} and all("tests ✓" in str(e["summary"]) for e in gates)
    pr = wswarm(repo.path, "pr")
    assert "**Unverified:** tests did not run (the worktree setup step failed)" in pr.stdout


def test_a_branch_that_merged_an_ejected_merge_mid_run_is_redone_without_it(repo: Repo, agent_script: object) -> None:
    """`absorber` brings `bad`'s merge into its branch while it runs (as the news of that merge invites);
    when the merge result fails and `bad` is ejected, `absorber`'s merge carries `bad`'s work: it is
    ejected too and redone, and no trace of `bad.txt` stays on the branch."""
    check = 'test -n "$WSWARM_TASK_ID" || ! test -f bad.txt'
    agent = """
import subprocess
tid, attempt = os.environ["WSWARM_TASK_ID"], os.environ["WSWARM_ATTEMPT"]
if tid == "bad":
    Path("fixed.txt" if os.environ.get("WSWARM_FEEDBACK") else "bad.txt").write_text("bad\\n")
else:
    if attempt == "1":
        news = Path(os.environ["WSWARM_NEWS"])
        heads = []
        for _ in range(600):
            heads = [json.loads(line)["head"] for line in news.read_text().splitlines() if '"head"' in line]
            if heads:
                break
            time.sleep(0.05)
        subprocess.run(["git", "merge", "-q", "--no-edit", heads[-1]], check=True)
    Path("absorber.txt").write_text("absorber\\n")
"""
    setup(repo, check, [{"id": "bad", "description": "bad"}, {"id": "absorber", "description": "absorber"}],
          cache=False)
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agents", "2",
                 "--agent-cmd", agent_script(agent))  # type: ignore[operator]
    assert res.returncode == 0, res.stderr
    st = status(repo)
    tasks = {t["id"]: (t["status"], t["attempts"]) for t in st["tasks"]}
    assert tasks == {"bad": ("merged", 2), "absorber": ("merged", 2)}
    ev = events(repo)
    assert [(e["task"], e["attempt"]) for e in ev if e["kind"] == "ejected"] == [("bad", 1), ("absorber", 1)]
    assert [e["reason"] for e in ev if e["kind"] == "ejected"][1] == (
        "ejected: this attempt merged into its branch the work of 'bad', which was ejected")
    assert [e["about"] for e in ev if e["kind"] == "news" and e["task"] == "absorber"][:1] == ["bad"]
    branch = str(st["integration_branch"])
    assert repo.git("log", "--format=%H", branch, "--", "bad.txt") == ""
    assert repo.show(branch, "absorber.txt") == "absorber" and repo.show(branch, "fixed.txt") == "bad"
