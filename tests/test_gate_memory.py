"""The gate remembers results by tree and judges a branch against its base, end to end."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from conftest import Repo, status, wswarm, write_plan

WRITE_OWN_FILE = """
tid = os.environ["WSWARM_TASK_ID"]
Path(tid + ".txt").write_text(tid + "\\n")
"""


def test_a_tree_is_checked_once_across_tasks_the_merge_result_and_runs(repo: Repo, agent_script: object,
                                                                      tmp_path: Path) -> None:
    counter = tmp_path / "runs-of-the-check"
    repo.write("wswarm.toml", f'[[gate.checks]]\nname = "count"\nrun = "echo $(git write-tree) >> {counter}"\n')
    repo.commit_all("config")
    write_plan(repo.path / "plan.json", [{"id": "one", "description": "one"},
                                         {"id": "two", "description": "two", "dependencies": ["one"]}])
    agent = agent_script(WRITE_OWN_FILE)  # type: ignore[operator]
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent)
    assert res.returncode == 0, res.stderr
    # "one" and "two" were checked; the merge result has the tree of "two" and was not checked again.
    trees = counter.read_text().split()
    assert len(trees) == 2 and len(set(trees)) == 2
    st = status(repo)
    assert st["merge_gate"] == "passed"
    run_dir = repo.state_dir / "runs" / str(st["run"])
    db = sqlite3.connect(run_dir / "state.db")
    merge_gate = json.loads(db.execute("SELECT merge_gate FROM run").fetchone()[0])
    db.close()
    assert [(c["name"], c["status"], c["note"]) for c in merge_gate["checks"]] == [
        ("count", "pass", "")]
    assert "merge-gate-started" in (run_dir / "events.jsonl").read_text()
    # A second run of the same plan produces the same trees: nothing is checked again.
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent)
    assert res.returncode == 0, res.stderr
    assert counter.read_text().split() == trees


BASE_CHECK = """\
from pathlib import Path
failures = []
if not Path("fix.txt").exists():
    failures.append("tests/test_old.py::test_broken")
if Path("bug.txt").exists():
    failures.append("tests/test_new.py::test_regression")
for f in failures:
    print("FAILED " + f + " - AssertionError")
raise SystemExit(1 if failures else 0)
"""


def test_branches_are_judged_only_on_what_they_make_newly_fail(repo: Repo, agent_script: object) -> None:
    repo.write("check.py", BASE_CHECK)
    repo.write("wswarm.toml", f'[[gate.checks]]\nname = "tests"\nkind = "tests"\nrun = "{sys.executable} check.py"\n')
    repo.commit_all("a base whose test suite already fails")
    write_plan(repo.path / "plan.json", [{"id": "unrelated", "description": "touch nothing tested"},
                                         {"id": "bug", "description": "introduce a regression"},
                                         {"id": "fix", "description": "fix the old failure"}])
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agents", "1", "--max-attempts", "1",
                 "--agent-cmd", agent_script(WRITE_OWN_FILE))  # type: ignore[operator]
    assert res.returncode == 1, res.stderr
    st = status(repo)
    tasks = {t["id"]: t for t in st["tasks"]}
    assert tasks["unrelated"]["status"] == "merged"
    assert tasks["fix"]["status"] == "merged"
    assert tasks["bug"]["status"] == "failed"
    assert str(tasks["bug"]["reason"]).startswith("gate FAILED: tests ✗")
    run_dir = repo.state_dir / "runs" / str(st["run"])

    def gate(task: str) -> dict[str, object]:
        report = json.loads((run_dir / "attempts" / task / "1" / "gate.json").read_text())
        return next(c for c in report["checks"] if c["name"] == "tests")  # type: ignore[no-any-return]

    assert gate("unrelated")["status"] == "pass"
    assert gate("unrelated")["note"] == "fails as the base does: 1 known failure, none new"
    assert gate("bug")["status"] == "fail"
    assert gate("bug")["note"] == "1 new failure beyond the base's 1"
    assert "test tests/test_new.py::test_regression" in str(gate("bug")["output"])
    assert gate("fix")["status"] == "pass"
    assert gate("fix")["note"] == "fixes the base's 1 failure"
    # The base was checked in a worktree of its own, which is gone (slots and the checkout remain).
    listed = [line for line in repo.git("worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")]
    assert listed and not [line for line in listed if line.endswith("--base")]
    assert all(line == f"worktree {repo.path}" or "/.git/wswarm/slots/" in line for line in listed)


def test_a_real_pytest_suite_that_already_fails_still_lets_good_tasks_merge(repo: Repo, agent_script: object) -> None:
    """The base has a failing pytest test; a task that does not touch it merges, one that adds a new
    failing test is refused — judged by real pytest output."""
    repo.write("tests/test_old.py", "def test_broken():\n    assert 1 == 2\n\ndef test_fine():\n    pass\n")
    repo.write("wswarm.toml", f'[[gate.checks]]\nname = "pytest"\nkind = "tests"\n'
               f'run = "{sys.executable} -m pytest -q -rfE -p no:cacheprovider tests"\n')
    repo.commit_all("a test suite with a known failure")
    agent = agent_script("""
tid = os.environ["WSWARM_TASK_ID"]
if tid == "feature":
    Path("app/feature.py").write_text("def double(x):\\n    return 2 * x\\n")
    Path("tests/test_feature.py").write_text("from app.feature import double\\n\\ndef test_double():\\n"
                                             "    assert double(2) == 4\\n")
else:
    Path("tests/test_regress.py").write_text("def test_new_bug():\\n    assert False\\n")
""")  # type: ignore[operator]
    write_plan(repo.path / "plan.json", [{"id": "feature", "description": "add double()"},
                                         {"id": "regress", "description": "add a broken test"}])
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--max-attempts", "1", "--agent-cmd", agent)
    assert res.returncode == 1, res.stderr
    st = status(repo)
    assert {t["id"]: t["status"] for t in st["tasks"]} == {"feature": "merged", "regress": "failed"}
    run_dir = repo.state_dir / "runs" / str(st["run"])
    regress = json.loads((run_dir / "attempts" / "regress" / "1" / "gate.json").read_text())
    check = next(c for c in regress["checks"] if c["name"] == "pytest")
    assert check["note"] == "1 new failure beyond the base's 1"
    assert "test tests/test_regress.py::test_new_bug" in check["output"]
    feature = json.loads((run_dir / "attempts" / "feature" / "1" / "gate.json").read_text())
    assert next(c for c in feature["checks"] if c["name"] == "pytest")["note"] == \
        "fails as the base does: 1 known failure, none new"


def test_a_probe_whose_setup_failed_runs_and_remembers_nothing(repo: Repo, tmp_path: Path) -> None:
    import threading

    from worktree_swarm.config import CheckConfig, Config, GateConfig, WorktreeConfig
    from worktree_swarm.gate.cache import GateCache, cache_key
    from worktree_swarm.gate.probe import Prober
    from worktree_swarm.git.repo import Repo as GitRepo
    from worktree_swarm.util.types import Sha

    counter = tmp_path / "ran"
    check = CheckConfig(name="count", run=f"echo ran >> {counter}")
    config = Config(gate=GateConfig(checks=(check,)), worktree=WorktreeConfig(setup="exit 3"))
    git_repo = GitRepo.discover(repo.path)
    cache = GateCache(tmp_path / "cache.db")
    head = Sha(repo.git("rev-parse", "HEAD"))
    prober = Prober(git_repo, config, tmp_path / "probe", env={}, log_dir=tmp_path / "logs", cache=cache,
                    cancel=threading.Event())
    try:
        result, output = prober.result(check, head)
    finally:
        prober.close()
    assert (result.status, result.note, output) == ("not-run", "the worktree setup step failed", "")
    assert not counter.exists()
    assert cache.get(cache_key(check, git_repo.tree_of(head), setup="exit 3")) is None
    assert len(repo.git("worktree", "list").splitlines()) == 1
