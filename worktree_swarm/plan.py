"""The plan file: reading it (JSON or TOML, a bare array of tasks or {"goal": ..., "tasks": [...]}) and
checking every field, into a `Plan`. Every failure is a PlanError naming the file and the task.

The model (`Task`, `Plan` and its DAG) is `plan_model.py`'s; it is imported from here too."""

from __future__ import annotations

import json
import pathlib
import re
import tomllib
from collections.abc import Mapping
from typing import Literal

from worktree_swarm.plan_model import MAX_ID_LENGTH, MAX_TASKS, Plan, Task, quoted, validate_task_id
from worktree_swarm.util.errors import PlanError
from worktree_swarm.util.types import TaskId

__all__ = ["Plan", "Task", "load_plan", "parse_plan", "plan_from_data", "validate_task_id"]

MAX_PLAN_BYTES = 5 * 1024 * 1024
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

# Control characters (C0, DEL, C1) and lone surrogates, which no UTF-8 file, argv or environment
# variable can carry. Tab and newline are allowed where text may have lines.
_BAD_IN_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_IN_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


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
    where = f"{source}: task {quoted(raw_id)}"
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
            raise PlanError(f"{where}: file pattern {quoted(pattern)} {reason}",
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
            raise _SyntaxProblem(f"key {quoted(key)} appears twice in one object")
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


def _names(names: list[str]) -> str:
    return ", ".join(quoted(name) for name in names)
