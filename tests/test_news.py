"""News of merged work reaches a running command agent: end to end through `wswarm start`, real git,
real agent scripts. (The built-in and the Claude Code agents' delivery is tested with their agents.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Repo, wswarm, write_plan

# One script plays both tasks. `waits` finishes only once news has arrived in its $WSWARM_NEWS file,
# which can only happen after `quick`, running beside it, has merged.
AGENT = """
import subprocess
task = os.environ["WSWARM_TASK_ID"]
news = Path(os.environ["WSWARM_NEWS"])
if task == "waits":
    empty_at_start = news.read_text() == ""
    deadline = time.monotonic() + 60
    while not news.read_text().endswith("\\n"):
        if time.monotonic() > deadline:
            print("no news came")
            sys.exit(1)
        time.sleep(0.05)
    item = json.loads(news.read_text().splitlines()[0])
    # The integration head it names is reachable from this worktree: the merged work can be read
    # (or merged) from here.
    theirs = subprocess.run(["git", "show", item["head"] + ":quick.txt"], capture_output=True, text=True)
    Path("seen.json").write_text(json.dumps({"item": item, "empty_at_start": empty_at_start,
                                             "theirs": theirs.stdout, "lines": len(news.read_text().splitlines())}))
else:
    Path("quick.txt").write_text("quick work\\n")
    print("wrote quick.txt")
"""


def events(repo: Repo) -> list[dict[str, Any]]:
    [run] = (repo.state_dir / "runs").iterdir()
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_a_running_command_agent_reads_news_of_a_merge_in_its_news_file(repo: Repo, tmp_path: Path,
                                                                          agent_script: Any) -> None:
    plan = write_plan(tmp_path / "plan.json", [
        {"id": "waits", "type": "general", "description": "wait for news", "dependencies": [], "files": []},
        {"id": "quick", "type": "general", "description": "add quick.txt", "dependencies": [], "files": []}])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "2", "--max-attempts", "1",
                 "--agent-cmd", agent_script(AGENT))

    assert res.returncode == 0, res.stderr
    integration = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    seen = json.loads(repo.show(integration, "seen.json"))
    [merged] = [e for e in events(repo) if e["kind"] == "merged" and e["task"] == "quick"]
    # One item, appended while the agent ran: the merged task, its summary, files and new head.
    assert seen["empty_at_start"] and seen["lines"] == 1
    assert seen["item"] == {"task": "quick", "summary": "wrote quick.txt", "files": ["quick.txt"],
                            "head": merged["commit"]}
    assert seen["theirs"] == "quick work\n"
    [news] = [e for e in events(repo) if e["kind"] == "news"]
    assert (news["task"], news["attempt"], news["about"], news["head"]) == ("waits", 1, "quick", merged["commit"])
    # The file is kept with the attempt.
    [run] = (repo.state_dir / "runs").iterdir()
    lines = [json.loads(line) for line in (run / "attempts" / "waits" / "1" / "news.jsonl").read_text().splitlines()]
    assert lines == [seen["item"]]
