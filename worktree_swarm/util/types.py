"""Small value types so commit ids, branch names and task ids are never mixed up."""

from __future__ import annotations

import re
from typing import NewType

Sha = NewType("Sha", str)
BranchName = NewType("BranchName", str)
TaskId = NewType("TaskId", str)
RunId = NewType("RunId", str)


_FULL_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def is_full_id(text: str) -> bool:
    """Whether TEXT is an object id as git writes it in full (SHA-1 or SHA-256, lower case): never an
    abbreviation, which a lookup would resolve to whatever object it happens to prefix."""
    return _FULL_ID.fullmatch(text) is not None
