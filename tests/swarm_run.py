"""Whole runs of the swarm for the test_swarm_* files: the real CLI in a subprocess, real git,
real agent processes.

Every agent there is a Python script (`make_agent` on the `agent_script` fixture) that records what
it saw into a folder outside the repository (the `rec_dir` fixture, passed as REC_DIR), so a test
can check the agent's contract from the agent's side, and the run's result from git,
`wswarm status --json` and the files under .git/wswarm/runs/<run>/.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Repo, Result, run_dir, wswarm, write_plan

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


def agent_logs(repo: Repo, task_id: str) -> str:
    """What `wswarm logs` prints of the agent's logs: everything before the first attempt's gate verdict."""
    res = wswarm(repo.path, "logs", task_id)
    assert res.returncode == 0, res.stderr
    return res.stdout.split("\n==> attempt 1: gate <==")[0] + "\n"
