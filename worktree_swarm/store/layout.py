"""Every path and folder name wswarm keeps under the repository's git common dir.

    <common dir>/wswarm/
      runs/<run id>/      state.db, events.jsonl, pr.md, plan.json, attempts/<task>/<n>/, merge-gate/
      worktrees/          a run's own worktrees (<run id>--<task>…), when slots are off
      slots/              worktrees kept between runs and reused
      gate-cache.db       gate results by tree
"""

from __future__ import annotations

from pathlib import Path

STATE_DB = "state.db"
EVENTS = "events.jsonl"
PR_BODY = "pr.md"
PLAN = "plan.json"
AGENT_LOG = "agent.log"
NEXT_FEEDBACK = "feedback-for-next-attempt.txt"
MERGE_GATE = "merge-gate"


def runs_dir(state_dir: Path) -> Path:
    return state_dir / "runs"


def worktrees_dir(state_dir: Path) -> Path:
    return state_dir / "worktrees"


def slots_dir(state_dir: Path) -> Path:
    return state_dir / "slots"


def gate_cache(state_dir: Path) -> Path:
    return state_dir / "gate-cache.db"
