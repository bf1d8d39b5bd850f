"""What the model is told about its tools (their JSON schemas), and how one call is carried out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worktree_swarm.agents.sandbox import DEFAULT_TIMEOUT, Runner
from worktree_swarm.agents.tools import (
    PAGE_LINES,
    READ_LIMIT,
    ToolError,
    Workspace,
    edit_file,
    list_dir,
    read_file,
    search,
    write_file,
)

_PATH = {"type": "string", "description": "a path relative to the worktree root"}

TOOL_SPECS: list[dict[str, Any]] = [
    {"name": "list",
     "description": "List a directory of the worktree: `name/` for directories, sizes for files. "
                    ".git is never shown.",
     "input_schema": {"type": "object", "properties": {
         "path": dict(_PATH, description="directory relative to the worktree root (default: the root)"),
         "recursive": {"type": "boolean", "description": "list subdirectories too (at most 500 entries)"}}}},
    {"name": "read",
     "description": f"Read a text file, {PAGE_LINES} lines at most unless limit says otherwise. Lines come "
                    "numbered (number, tab, text); the numbers are not part of the file. Files over "
                    f"{READ_LIMIT // 1024} KB must be read in parts with offset and limit.",
     "input_schema": {"type": "object", "required": ["path"], "properties": {
         "path": _PATH,
         "offset": {"type": "integer", "description": "first line to read, counting from 1"},
         "limit": {"type": "integer", "description": "how many lines to read"}}}},
    {"name": "write",
     "description": "Create a file or replace its whole content. Missing directories are created.",
     "input_schema": {"type": "object", "required": ["path", "content"], "properties": {
         "path": _PATH, "content": {"type": "string", "description": "the complete new content"}}}},
    {"name": "edit",
     "description": "Replace an exact string in a file. old_string must match the file exactly (whitespace "
                    "included, without read's line numbers) and occur once, unless replace_all is set.",
     "input_schema": {"type": "object", "required": ["path", "old_string", "new_string"], "properties": {
         "path": _PATH,
         "old_string": {"type": "string"},
         "new_string": {"type": "string"},
         "replace_all": {"type": "boolean", "description": "replace every occurrence"}}}},
    {"name": "search",
     "description": "Find lines matching a Python regular expression in the worktree's text files; "
                    "answers `path:line: text`, at most 200 matches.",
     "input_schema": {"type": "object", "required": ["pattern"], "properties": {
         "pattern": {"type": "string", "description": "a Python regular expression"},
         "path": dict(_PATH, description="a file or directory to search (default: the whole worktree)"),
         "glob": {"type": "string", "description": "only files whose path or name matches, e.g. *.py"},
         "ignore_case": {"type": "boolean"}}}},
    {"name": "run",
     "description": "Run a program in the worktree root and get its exit status and output (stdin is "
                    "closed). argv is a list of words: no shell is involved, so pipes, redirections, "
                    "globs and $variables are not interpreted; for those, run [\"sh\", \"-c\", \"...\"]. "
                    "Arguments naming paths must stay inside the worktree. The environment holds no "
                    "credentials. Leave committing to wswarm: it commits what you change.",
     "input_schema": {"type": "object", "required": ["argv"], "properties": {
         "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                  "description": 'the program and its arguments, e.g. ["python", "-m", "pytest", "-q"]'},
         "timeout": {"type": "number", "description": f"seconds before it is killed (default {DEFAULT_TIMEOUT:g})"}}}},
]


def call_tool(name: str, args: Any, *, workspace: Workspace, runner: Runner) -> tuple[str, bool]:
    """Carry out one tool call: (text for the model, whether it is an error), as valid UTF-8 text
    whatever file names or bytes the worktree holds (a name that is not UTF-8 would otherwise
    break the request to the API)."""
    text, is_error = _call_tool(name, args, workspace=workspace, runner=runner)
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), is_error


def _call_tool(name: str, args: Any, *, workspace: Workspace, runner: Runner) -> tuple[str, bool]:
    """Carry out one tool call: (text for the model, whether it is an error). Never raises for a
    refusal or a failing file operation: the model is told and decides what to do next."""
    handlers: dict[str, Callable[[dict[str, Any]], str]] = {
        "list": lambda a: list_dir(workspace, a),
        "read": lambda a: read_file(workspace, a),
        "write": lambda a: write_file(workspace, a),
        "edit": lambda a: edit_file(workspace, a),
        "search": lambda a: search(workspace, a),
        "run": runner.run,
    }
    handler = handlers.get(name)
    if handler is None:
        return f"there is no tool {name!r}; the tools are: {', '.join(handlers)}", True
    if not isinstance(args, dict):
        return "the tool input must be a JSON object", True
    try:
        return handler(args), False
    except ToolError as exc:
        return str(exc), True
    except OSError as exc:
        return f"{name} failed: {exc.strerror or exc}", True
    except ValueError as exc:       # e.g. a lone surrogate in `content` cannot be written as UTF-8
        return f"{name} failed: {exc}", True
