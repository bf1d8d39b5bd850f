"""The plan: tasks, their validation, and the dependency DAG. Pure logic, no git."""

from __future__ import annotations

import difflib
import json
import pathlib
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import networkx
import pygit2

from worktree_swarm.util.errors import PlanError
from worktree_swarm.util.types import TaskId

MAX_PLAN_BYTES = 5 * 1024 * 1024
MAX_TASKS = 1000
MAX_ID_LENGTH = 100
# Descriptions reach the agent as environment variables: Linux refuses one over 128 KiB (E2BIG) at
# every attempt, so the limit keeps well under it. Prompts and commands are held to the same size.
MAX_TEXT_BYTES = 32 * 1024
MAX_NAME_LENGTH = 200        # type, agent
MAX_PATTERN_LENGTH = 4096    # one `files` entry

REQUIRED_FIELDS = ("id", "description")
OPTIONAL_FIELDS = ("type", "dependencies", "files", "command", "agent", "prompt")
ALL_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
TOP_LEVEL_KEYS = ("goal", "tasks")
DEFAULT_TYPE = "general"

# git allows these in ref names, but they are hostile to shells, globs and revision syntax.
_FORBIDDEN_ID_CHARS = "~^:?*[\\"
_ID_HINT = "use letters, digits, '-', '_', '.' and '/' (as in 'refactor/buttons')"
# Control characters (C0, DEL, C1) and lone surrogates, which no UTF-8 file, argv or environment
# variable can carry. Tab and newline are allowed where text may have lines.
_BAD_IN_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_IN_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


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

    __slots__ = ("_tasks", "_by_id", "_index", "_graph", "_goal")

    def __init__(self, tasks: Iterable[Task], *, source: str = "plan", goal: str | None = None) -> None:
        """Check the plan-level rules (count, ids, dependencies, cycles); raise PlanError.
        GOAL is what the plan is for (the planner's goal), when known."""
        self._tasks = tuple(tasks)
        self._goal = goal
        if not self._tasks:
            raise PlanError(f"{source}: the plan has no tasks", hint="a plan is a JSON array of task objects")
        if len(self._tasks) > MAX_TASKS:
            raise PlanError(f"{source}: the plan has {len(self._tasks)} tasks, more than {MAX_TASKS}")
        self._by_id: dict[str, Task] = {}
        folded: dict[str, str] = {}
        for task in self._tasks:
            reason = validate_task_id(task.id)
            if reason is not None:
                raise PlanError(f"{source}: task id {_q(task.id)} cannot be part of a git branch name: {reason}",
                                hint=_ID_HINT)
            if task.id in self._by_id:
                raise PlanError(f"{source}: duplicate task id {_q(task.id)}")
            # Branch refs are files, and macOS/Windows filesystems fold case (macOS also normalises Unicode).
            first = folded.setdefault(unicodedata.normalize("NFC", task.id).casefold(), task.id)
            if first != task.id:
                raise PlanError(f"{source}: duplicate task id {_q(task.id)} (same as {_q(first)} ignoring case)")
            self._by_id[task.id] = task
        self._index = {task.id: i for i, task in enumerate(self._tasks)}
        graph = networkx.DiGraph()
        graph.add_nodes_from(task.id for task in self._tasks)
        for task in self._tasks:
            for dep in task.dependencies:
                if dep not in self._by_id:
                    close = difflib.get_close_matches(dep, list(self._by_id), n=1)
                    raise PlanError(f"{source}: task {_q(task.id)} depends on unknown task {_q(dep)}",
                                    hint=f"did you mean {_q(close[0])}?" if close else None)
                graph.add_edge(dep, task.id)
        try:
            cycle = networkx.find_cycle(graph)
        except networkx.NetworkXNoCycle:
            cycle = []
        if cycle:
            path = " → ".join([str(edge[0]) for edge in cycle] + [str(cycle[0][0])])
            raise PlanError(f"{source}: the plan has a cycle: {path}",
                            hint="remove one of these dependencies")
        self._graph = networkx.freeze(graph)

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
        """The frozen DAG; an edge runs from a dependency to its dependent."""
        return self._graph

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
            result[node] = 1 + max((result[s] for s in self._graph.successors(node)), default=0)
        return {task.id: result[task.id] for task in self._tasks}

    def dependents(self, task_id: str) -> set[TaskId]:
        """Every task that depends on `task_id`, directly or not; KeyError if unknown."""
        if task_id not in self._by_id:
            raise KeyError(task_id)
        return set(networkx.descendants(self._graph, task_id))

    def topological_order(self) -> list[TaskId]:
        """Dependencies before dependents; among ready tasks, file order wins."""
        return list(networkx.lexicographical_topological_sort(self._graph, key=self._index.__getitem__))

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
            for succ in self._graph.successors(tid):
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


def load_plan(path: pathlib.Path, *, allow_command: bool = True) -> Plan:
    """Read and validate a plan file: `.toml` is TOML, `.json` JSON, anything else either."""
    source = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PLAN_BYTES + 1)
    except OSError as e:
        raise PlanError(f"{source}: cannot read the plan file: {e.strerror or e}") from e
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError(f"{source}: the plan file is larger than {MAX_PLAN_BYTES // (1024 * 1024)} MB")
    try:
        # utf-8-sig: editors on Windows like to start files with a byte-order mark.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PlanError(f"{source}: the plan file is not UTF-8 (bad byte at offset {e.start})") from e
    suffix = path.suffix.lower()
    if suffix in (".json", ".toml"):
        return parse_plan(text, fmt="json" if suffix == ".json" else "toml", source=source,
                          allow_command=allow_command)
    try:
        data = _parse_text(text, "json")
    except _SyntaxProblem as json_problem:
        try:
            data = _parse_text(text, "toml")
        except _SyntaxProblem as toml_problem:
            raise PlanError(f"{source}: neither valid JSON ({json_problem}) nor valid TOML ({toml_problem})",
                            hint="name the file .json or .toml to get one parser's error") from None
    return plan_from_data(data, source=source, allow_command=allow_command)


def parse_plan(text: str, *, fmt: Literal["json", "toml"], source: str, allow_command: bool = True) -> Plan:
    """Parse plan text in the given format and validate it; every failure is a PlanError."""
    return plan_from_data(_decode(text, fmt, source), source=source, allow_command=allow_command)


def plan_from_data(data: object, *, source: str, allow_command: bool = True) -> Plan:
    """Validate decoded JSON/TOML data (an array of tasks, or {"goal": ..., "tasks": [...]} with an
    optional goal) into a Plan."""
    goal = None
    if isinstance(data, Mapping):
        extra = sorted(str(key) for key in data if key not in TOP_LEVEL_KEYS)
        if extra:
            raise PlanError(f"{source}: unknown top-level key{'s' if len(extra) > 1 else ''} {_names(extra)}",
                            hint="the top-level keys are 'goal' (optional) and 'tasks'")
        goal = _goal(data.get("goal"), source)
        if "tasks" not in data:
            raise PlanError(f"{source}: the plan has no tasks", hint="add tasks as [[tasks]] tables or a 'tasks' array")
        data = data["tasks"]
        if not isinstance(data, (list, tuple)):
            raise PlanError(f"{source}: 'tasks' must be an array of task objects, got {_kind(data)}")
    elif not isinstance(data, (list, tuple)):
        raise PlanError(f"{source}: a plan must be an array of task objects, got {_kind(data)}",
                        hint='write [ {"id": ..., "description": ...}, ... ] or {"tasks": [...]}')
    if len(data) > MAX_TASKS:
        raise PlanError(f"{source}: the plan has {len(data)} tasks, more than {MAX_TASKS}")
    tasks = [_parse_task(item, n, source, allow_command) for n, item in enumerate(data, start=1)]
    return Plan(tasks, source=source, goal=goal)


def _goal(value: object, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PlanError(f"{source}: 'goal' must be a string, got {_kind(value)}")
    goal = _checked(value, "'goal'", source, lines=True).strip()
    if not goal:
        raise PlanError(f"{source}: 'goal' is empty", hint="say what the plan is for, or leave 'goal' out")
    return goal


def _parse_task(item: object, number: int, source: str, allow_command: bool) -> Task:
    if not isinstance(item, Mapping):
        raise PlanError(f"{source}: task #{number} must be an object, got {_kind(item)}")
    if "id" not in item:
        raise PlanError(f"{source}: task #{number} has no 'id'")
    raw_id = item["id"]
    if not isinstance(raw_id, str):
        raise PlanError(f"{source}: task #{number}: 'id' must be a string, got {_kind(raw_id)}")
    if not raw_id.strip():
        raise PlanError(f"{source}: task #{number}: 'id' is empty")
    where = f"{source}: task {_q(raw_id)}"
    unknown = sorted(str(key) for key in item if key not in ALL_FIELDS)
    if unknown:
        raise PlanError(f"{where} has unknown field{'s' if len(unknown) > 1 else ''} {_names(unknown)}",
                        hint=f"allowed fields: {', '.join(ALL_FIELDS)}")
    if "description" not in item:
        raise PlanError(f"{where} has no 'description'")
    description = item["description"]
    if not isinstance(description, str):
        raise PlanError(f"{where}: 'description' must be a string, got {_kind(description)}")
    description = _checked(description, "'description'", where, lines=True)
    if not description.strip():
        raise PlanError(f"{where}: 'description' is empty")
    type_ = _string(item, "type", where)
    command = _string(item, "command", where, lines=True)
    if command is not None and not allow_command:
        raise PlanError(f"{where} sets 'command', which a generated plan may not",
                        hint="only a plan file you write yourself may run a command as a task's agent")
    if command is not None and not command.strip():
        raise PlanError(f"{where}: 'command' is empty")
    agent = _string(item, "agent", where)
    if agent is not None and not agent.strip():
        raise PlanError(f"{where}: 'agent' is empty")
    files = _strings(item, "files", where, limit=MAX_PATTERN_LENGTH)
    for pattern in files:
        reason = _bad_pattern(pattern)
        if reason:
            raise PlanError(f"{where}: file pattern {_q(pattern)} {reason}",
                            hint="patterns are relative to the repository root, like 'src/*.py'")
    return Task(
        id=TaskId(raw_id),
        type=(type_ or "").strip() or DEFAULT_TYPE,
        description=description.strip(),
        dependencies=tuple(TaskId(d) for d in dict.fromkeys(_strings(item, "dependencies", where,
                                                                      limit=MAX_ID_LENGTH))),
        files=tuple(files),
        command=command,
        agent=agent,
        prompt=_string(item, "prompt", where, lines=True),
    )


def _string(item: Mapping[object, object], name: str, where: str, *, lines: bool = False) -> str | None:
    # A null optional field means "not set": models emit `"command": null` freely.
    value = item.get(name)
    if value is not None and not isinstance(value, str):
        raise PlanError(f"{where}: {name!r} must be a string, got {_kind(value)}")
    return None if value is None else _checked(value, repr(name), where, lines=lines)


def _strings(item: Mapping[object, object], name: str, where: str, *, limit: int) -> list[str]:
    value = item.get(name)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise PlanError(f"{where}: {name!r} must be an array of strings, got {_kind(value)}")
    for n, element in enumerate(value, start=1):
        if not isinstance(element, str):
            raise PlanError(f"{where}: {name!r} must be an array of strings, item {n} is {_kind(element)}")
    return [_checked(element, f"{name!r} item {n}", where, lines=False, limit=limit)
            for n, element in enumerate(value, start=1)]


def _checked(value: str, field: str, where: str, *, lines: bool, limit: int = MAX_NAME_LENGTH) -> str:
    """VALUE if a plan may carry it, with Windows line ends made plain; else a PlanError naming FIELD.

    Text with LINES (description, prompt, command) may hold tabs and newlines and up to
    MAX_TEXT_BYTES; a name (type, agent, a files or dependencies item) no control character and up
    to LIMIT characters. Lone surrogates are refused everywhere: no file, argv or environment can hold them.
    """
    if lines:
        value = value.replace("\r\n", "\n")
    found = (_BAD_IN_LINES if lines else _BAD_IN_NAME).search(value)
    if found is not None:
        ch = found.group()
        what = ("a NUL character" if ch == "\0" else
                f"the lone surrogate {ascii(ch)} (not valid Unicode)" if "\ud800" <= ch <= "\udfff" else
                f"the control character {ascii(ch)}")
        allowed = "line breaks and tabs, but no other control character" if lines else "no control character"
        raise PlanError(f"{where}: {field} contains {what} at position {found.start():,}",
                        hint=f"remove it from the plan; this field may hold {allowed}")
    if lines and len(value.encode("utf-8")) > MAX_TEXT_BYTES:
        raise PlanError(f"{where}: {field} is {len(value.encode('utf-8')):,} bytes, more than the limit of "
                        f"{MAX_TEXT_BYTES // 1024} KiB",
                        hint="shorten it: put long instructions in a file in the repository and name that file")
    if not lines and len(value) > limit:
        raise PlanError(f"{where}: {field} is {len(value):,} characters long, more than the limit of {limit:,}",
                        hint="shorten it")
    return value


def _bad_pattern(pattern: str) -> str | None:
    if not pattern.strip():
        return "is empty"
    if pattern.startswith(("/", "\\")) or pathlib.PureWindowsPath(pattern).drive:
        return "is absolute"
    if ".." in pattern.replace("\\", "/").split("/"):
        return "contains a '..' component"
    return None


class _SyntaxProblem(ValueError):
    """Why text did not parse, already phrased for a message (with line and column)."""


def _decode(text: str, fmt: Literal["json", "toml"], source: str) -> object:
    try:
        return _parse_text(text, fmt)
    except _SyntaxProblem as e:
        raise PlanError(f"{source}: not valid {fmt.upper()}: {e}") from e


def _parse_text(text: str, fmt: Literal["json", "toml"]) -> object:
    try:
        if fmt == "json":
            return json.loads(text, object_pairs_hook=_no_duplicate_keys)
        return tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise _SyntaxProblem(f"{e.msg} (line {e.lineno}, column {e.colno})") from e
    except tomllib.TOMLDecodeError as e:
        raise _SyntaxProblem(str(e)) from e
    except RecursionError as e:
        raise _SyntaxProblem("nested too deeply") from e


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json keeps the last of two equal keys silently; a plan would quietly lose a field.
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _SyntaxProblem(f"key {_q(key)} appears twice in one object")
        out[key] = value
    return out


def _kind(value: object) -> str:
    """The JSON name of a value's type; bool is checked before int because bool is an int."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _q(text: str) -> str:
    """Quote a name for a one-line message: repr escapes newlines; very long names are cut."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _names(names: list[str]) -> str:
    return ", ".join(_q(name) for name in names)
