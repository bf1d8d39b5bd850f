"""What an agent is told: pure rendering, tested without a repository."""

from __future__ import annotations

from worktree_swarm.agents.prompt import build_prompt, role_prompt, system_prompt, task_prompt
from worktree_swarm.plan import plan_from_data

TASK = plan_from_data([{"id": "docs", "type": "docs", "description": "Document it", "files": ["README.md"]}],
                      source="test")["docs"]


def test_feedback_holding_backticks_stays_inside_its_fence() -> None:
    feedback = "conflict in README.md:\n```python\nprint(1)\n```\nand ```` four"
    text = build_prompt(TASK, role="r", dependencies=[], feedback=feedback)
    body = text.split("# Your previous attempt was sent back", 1)[1]
    assert "\n`````\nconflict in README.md:" in body and body.rstrip().endswith("four\n`````")


def test_roles_configured_then_built_in_then_general() -> None:
    assert role_prompt("docs", {"docs": "Write haiku."}) == "Write haiku."
    assert "documentation" in role_prompt("docs", {})
    assert role_prompt("astrology", {}) == role_prompt("general", {})


def test_dependencies_say_what_they_changed() -> None:
    text = build_prompt(TASK, role="r", feedback=None, dependencies=[
        {"id": "api", "description": "Add the API", "files": ["app.py"], "summary": "added /health"}])
    assert "## `api`: Add the API\n\nChanged: `app.py`\n\nadded /health" in text
    assert "- `README.md`" in text and "sent back" not in text


def test_the_whole_prompt_is_the_system_prompt_then_the_task_prompt() -> None:
    whole = build_prompt(TASK, role="Write well.", dependencies=[], feedback="fix it")
    assert whole == "# Role\n\n" + system_prompt("Write well.") + "\n\n" + task_prompt(
        TASK, dependencies=[], feedback="fix it")
    assert system_prompt("Write well.").startswith("Write well.\n\nYou work in a git worktree of your own")
