"""News of merged work reaches an agent running on a worker, as it reaches a local one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import wswarm, write_plan
from tests.test_remote_run import Cluster, cluster, events  # noqa: F401  (cluster is a fixture)

# `first` finishes once `second` runs; `second` waits (up to a minute) for news of `first` in
# $WSWARM_NEWS and writes what it heard.
AGENT = """\
import json, os, sys, time
from pathlib import Path
task, marks = os.environ["WSWARM_TASK_ID"], Path(sys.argv[1])
Path("out").mkdir(exist_ok=True)
if task == "first":
    while not (marks / "second-started").is_file():
        time.sleep(0.05)
    Path("out/first.txt").write_text("first\\n")
else:
    (marks / "second-started").write_text("")
    news, heard, deadline = Path(os.environ["WSWARM_NEWS"]), None, time.monotonic() + 60
    while heard is None and time.monotonic() < deadline:
        heard = next((item for item in map(json.loads, news.read_text().splitlines())
                      if item.get("task") == "first"), None)
        time.sleep(0.05)
    Path("out/second.txt").write_text(json.dumps(heard) + "\\n")
"""


def test_a_remote_agent_hears_of_a_merge_while_it_works(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    marks = tmp_path / "marks"
    marks.mkdir()
    agent = f"{sys.executable} {script} {marks}"
    plan = write_plan(tmp_path / "plan.json", [{"id": "first", "type": "feature", "description": "first"},
                                               {"id": "second", "type": "feature", "description": "second"}])
    cluster.start_worker("w1", agent=agent, agents=2)
    res = wswarm(cluster.repo.path, "start", "--plan", str(plan), "--redis", cluster.redis.url,
                 "--agent-cmd", agent, "--lease", "5", timeout=180)
    assert res.returncode == 0, res.stderr
    evs = events(cluster.repo)
    [merged] = [e for e in evs if e["kind"] == "merged" and e["task"] == "first"]
    [news] = [e for e in evs if e["kind"] == "news"]
    assert news["task"] == "second" and news["about"] == "first" and news["head"] == merged["commit"]
    [branch] = cluster.repo.branches("wswarm/*/integration")
    heard = json.loads(cluster.repo.git("show", f"{branch}:out/second.txt"))
    assert heard is not None, "the remote agent never heard of the merge"
    assert heard["task"] == "first" and heard["head"] == merged["commit"]
