"""The `status --json` page documents every field the command prints, and no field it does not."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import Repo, wswarm, write_plan

DOC = Path(__file__).resolve().parent.parent / "docs" / "status-json.md"


def documented() -> set[str]:
    return set(re.findall(r"^\| `([a-z_\[\].]+)`", DOC.read_text(), re.MULTILINE)) | {
        name for row in re.findall(r"^\| (`[a-z_.]+`(?:, `[a-z_.]+`)+) \|", DOC.read_text(), re.MULTILINE)
        for name in re.findall(r"`([a-z_.]+)`", row)}


def test_every_status_field_is_documented(repo: Repo, tmp_path: Path, agent_script: object) -> None:
    cmd = agent_script('Path("app/core.py").write_text("VALUE = 2\\n")\n')  # type: ignore[operator]
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "description": "d"}])
    assert wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", cmd).returncode == 0
    data = wswarm(repo.path, "status", "--json").json()
    printed = ((set(data) - {"tasks"}) | {f"tasks[].{key}" for key in data["tasks"][0]}
               | {f"figures.{key}" for key in data["figures"]})
    assert printed == documented()
