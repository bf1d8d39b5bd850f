"""Every event kind is spelled once (store/events.py) and documented once (docs/dashboard.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import worktree_swarm
from worktree_swarm.store.events import EventKind, kind_of

DOC = Path(__file__).parent.parent / "docs" / "dashboard.md"
PACKAGE = Path(worktree_swarm.__file__).parent


def documented() -> set[str]:
    text = DOC.read_text(encoding="utf-8")
    table = text.split("| kind | when | extra fields |", 1)[1].split("\n\n", 1)[0]
    kinds: set[str] = set()
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        kinds.update(re.findall(r"`([a-z-]+)`", first))
    return kinds


def test_the_docs_table_lists_every_kind_and_no_other() -> None:
    assert documented() == {k.value for k in EventKind}


def test_no_event_is_written_with_a_bare_string() -> None:
    """Every call that writes an event passes an EventKind, never a literal a typo could change."""
    bare = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("event", "_emit") and node.args
                    and isinstance(node.args[0], (ast.Constant, ast.JoinedStr))):
                bare.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert bare == []


def test_kind_of_names_only_known_kinds() -> None:
    assert kind_of("merged") is EventKind.MERGED
    assert kind_of("remote-event") is None and kind_of(None) is None
