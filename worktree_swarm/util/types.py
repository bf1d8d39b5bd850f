"""Small value types so commit ids, branch names and task ids are never mixed up."""

from __future__ import annotations

from typing import NewType

Sha = NewType("Sha", str)
BranchName = NewType("BranchName", str)
TaskId = NewType("TaskId", str)
RunId = NewType("RunId", str)
