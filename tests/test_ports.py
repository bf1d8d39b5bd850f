"""Every attempt gets a TCP port of its own: parallel tasks' servers never collide."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Repo, wswarm, write_plan

AGENT = """
import socket
tid, port = os.environ["WSWARM_TASK_ID"], int(os.environ["WSWARM_PORT"])
server = socket.socket()
server.bind(("127.0.0.1", port))   # fails with EADDRINUSE if another attempt got the same port
server.listen()
marks = Path(os.environ["MARKS"])
(marks / tid).write_text(str(port))
other = "b" if tid == "a" else "a"
deadline = time.time() + 20
while not (marks / other).exists():   # both servers are up at the same time
    assert time.time() < deadline, "the other agent never started"
    time.sleep(0.05)
Path(tid + ".txt").write_text(tid + "\\n")
server.close()
"""


def test_parallel_attempts_get_distinct_ports_shared_with_their_gate(repo: Repo, agent_script: object,
                                                                    tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    seen = tmp_path / "gate-ports"
    repo.write("wswarm.toml", '[[gate.checks]]\nname = "port"\n'
               f'run = "echo $WSWARM_TASK_ID $WSWARM_PORT >> {seen}"\n')
    repo.commit_all("config")
    write_plan(repo.path / "plan.json", [{"id": "a", "description": "a"}, {"id": "b", "description": "b"}])
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agents", "2", "--max-attempts", "1",
                 "--agent-cmd", agent_script(AGENT), env={"MARKS": str(marks)})  # type: ignore[operator]
    assert res.returncode == 0, res.stderr
    agent_ports = {t: int((marks / t).read_text()) for t in ("a", "b")}
    assert agent_ports["a"] != agent_ports["b"]
    lines = [line.split() for line in seen.read_text().splitlines()]
    # Task branches report "<task> <port>"; the merge-result gate has a port but no task.
    gate_ports = dict(words for words in lines if len(words) == 2)
    assert [words for words in lines if len(words) != 2] == [[words[0]] for words in lines if len(words) == 1]
    assert len([words for words in lines if len(words) == 1]) == 1
    assert {t: int(p) for t, p in gate_ports.items()} == agent_ports
    run_dir = next((repo.state_dir / "runs").iterdir())
    started = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
               if '"attempt-started"' in line]
    assert {e["task"]: e["port"] for e in started} == agent_ports
