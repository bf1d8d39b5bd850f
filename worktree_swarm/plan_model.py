"""The plan as a model: tasks, the rules a plan as a whole obeys (ids that can name a branch, no
duplicate, no unknown dependency, no cycle) and the dependency DAG. Pure logic, no git.

Reading a plan file (JSON or TOML) and checking its fields is `plan.py`'s, which builds these."""

from __future__ import annotations

import difflib
import heapq
import json
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pygit2

from worktree_swarm.util.errors import PlanError
from worktree_swarm.util.types import TaskId

if TYPE_CHECKING:
    import networkx

MAX_TASKS = 1000
MAX_ID_LENGTH = 100

# git allows these in ref names, but they are hostile to shells, globs and revision syntax.
_FORBIDDEN_ID_CHARS = "~^:?*[\\"
_ID_HINT = "use letters, digits, '-', '_', '.' and '/' (as in 'refactor/buttons')"


@dataclass(frozen=True)
class Task:
    """One unit of work; `files` are glob patterns relative to the repository root."""

    id: TaskId
    type: str
    description: str
    dependencies: tuple[TaskId, ...] = ()
    files: tuple[str, ...] = ()
    command: str | None = None
    agent: str | None = None
    prompt: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The plan-file shape of this task; unset optional fields are left out."""
        out: dict[str, object] = {
            "id": self.id,
            "type": self.type,
            "description": self.description,
            "dependencies": list(self.dependencies),
            "files": list(self.files),
        }
        for name in ("command", "agent", "prompt"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


class Plan:
    """A validated, immutable set of tasks and the DAG of their dependencies."""

    __slots__ = ("_tasks", "_by_id", "_index", "_after", "_goal", "_order")

    def __init__(self, tasks: Iterable[Task], *, source: str = "plan", goal: str | None = None) -> None:
        """Check the plan-level rules (count, ids, dependencies, cycles); raise PlanError.
        GOAL is what the plan is for (the planner's goal), when known."""
        self._tasks = tuple(tasks)
        self._goal = goal
        self._order: tuple[TaskId, ...] | None = None
        if not self._tasks:
            raise PlanError(f"{source}: the plan has no tasks", hint="a plan is a JSON array of task objects")
        if len(self._tasks) > MAX_TASKS:
            raise PlanError(f"{source}: the plan has {len(self._tasks)} tasks, more than {MAX_TASKS}")
        self._by_id: dict[str, Task] = {}
        folded: dict[str, str] = {}
        for task in self._tasks:
            reason = validate_task_id(task.id)
            if reason is not None:
                raise PlanError(f"{source}: task id {quoted(task.id)} cannot be part of a git branch name: {reason}",
                                hint=_ID_HINT)
            if task.id in self._by_id:
                raise PlanError(f"{source}: duplicate task id {quoted(task.id)}")
            # Branch refs are files, and macOS/Windows filesystems fold case (macOS also normalises Unicode).
            first = folded.setdefault(unicodedata.normalize("NFC", task.id).casefold(), task.id)
            if first != task.id:
                raise PlanError(f"{source}: duplicate task id {quoted(task.id)} (same as {quoted(first)} ignoring case)")
            self._by_id[task.id] = task
        self._index = {task.id: i for i, task in enumerate(self._tasks)}
        # The DAG as lists of dependents in file order: an edge runs from a dependency to its dependent.
        # Kept by hand rather than as a networkx graph: importing networkx costs every command that
        # loads a plan ~85 ms (it loads all its algorithms), and these few walks are all a run needs.
        self._after: dict[TaskId, list[TaskId]] = {task.id: [] for task in self._tasks}
        for task in self._tasks:
            for dep in dict.fromkeys(task.dependencies):
                if dep not in self._by_id:
                    close = difflib.get_close_matches(dep, list(self._by_id), n=1)
                    raise PlanError(f"{source}: task {quoted(task.id)} depends on unknown task {quoted(dep)}",
                                    hint=f"did you mean {quoted(close[0])}?" if close else None)
                self._after[dep].append(task.id)
        cycle = self._a_cycle()
        if cycle:
            raise PlanError(f"{source}: the plan has a cycle: {' → '.join(cycle + cycle[:1])}",
                            hint="remove one of these dependencies")

    def _a_cycle(self) -> list[TaskId]:
        """The tasks of one cycle of dependencies in edge order (the first met walking in file order),
        or [] when there is none."""
        state: dict[TaskId, int] = {}          # 1: on the walk's path, 2: done
        for root in self._after:
            if root in state:
                continue
            path: list[TaskId] = [root]
            todo = [iter(self._after[root])]
            state[root] = 1
            while todo:
                nxt = next(todo[-1], None)
                if nxt is None:
                    state[path.pop()] = 2
                    todo.pop()
                elif state.get(nxt) == 1:
                    return path[path.index(nxt):]
                elif nxt not in state:
                    state[nxt] = 1
                    path.append(nxt)
                    todo.append(iter(self._after[nxt]))
        return []

    @property
    def goal(self) -> str | None:
        """What the plan is for, as given to the planner or written in the file; None when unknown."""
        return self._goal

    def with_goal(self, goal: str | None) -> Plan:
        """The same tasks, for GOAL."""
        return Plan(self._tasks, goal=goal)

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The tasks in file order."""
        return self._tasks

    @property
    def graph(self) -> networkx.DiGraph:
        """The DAG as a frozen networkx graph (for the planner's and the dashboard's analyses); an
        edge runs from a dependency to its dependent."""
        import networkx

        graph = networkx.DiGraph()
        graph.add_nodes_from(self._after)
        graph.add_edges_from((dep, task) for dep, after in self._after.items() for task in after)
        return networkx.freeze(graph)

    def __getitem__(self, task_id: str) -> Task:
        return self._by_id[task_id]

    def __contains__(self, item: object) -> bool:
        # `"a" in plan` must mean "is there a task 'a'", not compare a string with Task objects.
        if isinstance(item, Task):
            return self._by_id.get(item.id) == item
        return isinstance(item, str) and item in self._by_id

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def __repr__(self) -> str:
        return f"Plan({[task.id for task in self._tasks]!r})"

    def ids(self) -> list[TaskId]:
        """Task ids in file order."""
        return [task.id for task in self._tasks]

    def priority(self) -> dict[TaskId, int]:
        """Length in tasks of the longest chain of dependents from each task (a sink is 1)."""
        result: dict[TaskId, int] = {}
        for node in reversed(self.topological_order()):
            result[node] = 1 + max((result[s] for s in self._after[node]), default=0)
        return {task.id: result[task.id] for task in self._tasks}

    def dependents(self, task_id: str) -> set[TaskId]:
        """Every task that depends on `task_id`, directly or not; KeyError if unknown."""
        if task_id not in self._by_id:
            raise KeyError(task_id)
        seen: set[TaskId] = set()
        todo = list(self._after[TaskId(task_id)])
        while todo:
            tid = todo.pop()
            if tid not in seen:
                seen.add(tid)
                todo.extend(self._after[tid])
        return seen

    def topological_order(self) -> list[TaskId]:
        """Dependencies before dependents; among ready tasks, file order wins."""
        if self._order is None:     # once: every launch orders its task's dependencies by it
            self._order = tuple(self._ordered())
        return list(self._order)

    def _ordered(self) -> list[TaskId]:
        waiting = {tid: 0 for tid in self._after}
        for after in self._after.values():
            for tid in after:
                waiting[tid] += 1
        ready = [self._index[tid] for tid, n in waiting.items() if n == 0]
        heapq.heapify(ready)
        order: list[TaskId] = []
        while ready:
            tid = self._tasks[heapq.heappop(ready)].id
            order.append(tid)
            for nxt in self._after[tid]:
                waiting[nxt] -= 1
                if waiting[nxt] == 0:
                    heapq.heappush(ready, self._index[nxt])
        return order

    def width(self, among: Iterable[str] | None = None) -> int:
        """The most tasks of AMONG (default: all) that can run at once: the largest set of them
        none of which depends on another, directly or through any task of the plan."""
        # Dilworth: the largest antichain is as large as the fewest chains covering the tasks, which
        # is the count minus a maximum matching of "u runs before v" pairs (Kuhn's augmenting paths
        # over reachability bitsets: milliseconds for 1,000 tasks, where networkx's closure and
        # Hopcroft-Karp took seconds on a long chain).
        order = self.topological_order()
        index: dict[str, int] = {tid: i for i, tid in enumerate(order)}
        wanted = 0
        for tid in (order if among is None else among):
            wanted |= 1 << index[tid]
        reach = [0] * len(order)
        for tid in reversed(order):
            bits = 0
            for succ in self._after[tid]:
                bits |= reach[index[succ]] | 1 << index[succ]
            reach[index[tid]] = bits
        reach = [bits & wanted for bits in reach]
        owner = [-1] * len(order)           # a task "after" -> the task matched before it
        left = [i for i in range(len(order)) if wanted >> i & 1]
        return len(left) - sum(_augment(start, reach, owner) for start in left)

    def to_json(self) -> str:
        """The tasks as a JSON array (indent 2) that `parse_plan` reads back to an equal plan."""
        return json.dumps([task.to_dict() for task in self._tasks], indent=2, ensure_ascii=False)

    def to_file_json(self) -> str:
        """The plan as a plan file: `{"goal": ..., "tasks": [...]}`, or the bare array without a goal."""
        if self._goal is None:
            return self.to_json()
        return json.dumps({"goal": self._goal, "tasks": [task.to_dict() for task in self._tasks]}, indent=2,
                          ensure_ascii=False)


def _augment(start: int, reach: list[int], owner: list[int]) -> bool:
    """One augmenting path from START in the matching OWNER (Kuhn), iteratively: a chain of 1,000
    tasks would pass Python's recursion limit."""
    seen = 0
    stack = [[start, reach[start]]]
    path: list[int] = []                # the task after each frame's task, tried right now
    while stack:
        frame = stack[-1]
        candidates = frame[1] & ~seen
        if not candidates:
            stack.pop()
            if path:
                path.pop()
            continue
        low = candidates & -candidates
        frame[1] = candidates ^ low
        seen |= low
        after = low.bit_length() - 1
        path.append(after)
        if owner[after] == -1:
            for (task, _), target in zip(stack, path):
                owner[target] = task
            return True
        stack.append([owner[after], reach[owner[after]]])
    return False


def validate_task_id(task_id: str) -> str | None:
    """None when `task_id` can name a branch (and is sane in shells and globs), else the reason."""
    if not task_id:
        return "it is empty"
    if len(task_id) > MAX_ID_LENGTH:
        return f"it is longer than {MAX_ID_LENGTH} characters"
    for ch in task_id:
        if ch.isspace() or unicodedata.category(ch)[0] in "CZ":
            return f"it contains whitespace or a control character ({ascii(ch)})"
        if ch in _FORBIDDEN_ID_CHARS:
            return f"it contains {ch!r}"
    if task_id.startswith("-"):
        return "it starts with '-'"
    if task_id.startswith("/") or task_id.endswith("/"):
        return "it starts or ends with '/'"
    if "//" in task_id:
        return "it contains '//'"
    if "@{" in task_id:
        return "it contains '@{'"
    if task_id == "@":
        return "it is '@'"
    if ".." in task_id:
        return "it contains '..'"
    for part in task_id.split("/"):
        if part.startswith("."):
            return f"the part {part!r} starts with '.'"
        if part.endswith(".lock"):
            return f"the part {part!r} ends with '.lock'"
        if part.endswith("."):
            return f"the part {part!r} ends with '.'"
    if not pygit2.reference_is_valid_name(f"refs/heads/wswarm/run/{task_id}/1"):
        return "git does not accept it in a branch name"
    return None


def quoted(text: str) -> str:
    """Quote a name for a one-line message: repr escapes newlines; very long names are cut."""
    return repr(text if len(text) <= 60 else text[:57] + "...")
