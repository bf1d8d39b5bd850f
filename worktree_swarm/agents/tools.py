"""The built-in agent's file tools, confined to one worktree.

Every path a model names is resolved (symbolic links included) and must land inside the worktree and
outside git's own files. A refusal is a ToolError whose message goes back to the model as an
is_error tool result; nothing here raises past `call_tool`.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex

READ_LIMIT = 256 * 1024          # bytes of a file read whole; larger files are read by line range
WRITE_LIMIT = 1024 * 1024        # bytes a write or an edit may leave in one file
SEARCH_FILE_LIMIT = 1024 * 1024  # larger files are skipped by search (generated or data files)
LINE_LIMIT = 2000                # characters of one line shown by read
PAGE_LINES = 2000                # lines read returns when not told how many
LIST_LIMIT = 500
SEARCH_LIMIT = 200
SEARCH_FILES = 20_000            # files one search reads at most (a vendored tree would take minutes)
SEARCH_SECONDS = 2.0             # matching time one search may spend, over all its lines
PATTERN_LIMIT = 1000             # characters of a search pattern
PATTERN_NODES = 100_000          # pattern size once fixed repeat counts are written out (see _pattern_size)


class ToolError(Exception):
    """A refused or failed tool call: its message is what the model is told."""


@dataclass(frozen=True)
class Workspace:
    """The worktree the tools may touch. ROOT is resolved once, so a symlinked temp dir still works."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(os.path.realpath(self.root)))

    def resolve(self, path: object) -> Path:
        """The real path PATH names, refused unless it stays inside the worktree and out of .git.

        Relative paths are taken from the worktree root; an absolute one must point inside it.
        Symbolic links are followed for every existing component, so a link (or a linked parent
        directory of a new file) that leads out is refused too.
        """
        if not isinstance(path, str) or not path.strip():
            raise ToolError("`path` must be a non-empty string, relative to the worktree root")
        if "\0" in path:
            raise ToolError("`path` contains a NUL character")
        candidate = Path(path) if os.path.isabs(path) else self.root / path
        if not Path(os.path.normpath(candidate)).is_relative_to(self.root):
            raise ToolError(f"{path!r} is outside the worktree: use paths relative to its root, "
                            "and `..` may not leave it")
        real = Path(os.path.realpath(candidate))
        if not real.is_relative_to(self.root):
            raise ToolError(f"{path!r} is refused: a symbolic link on the way leads outside the worktree")
        if ".git" in real.relative_to(self.root).parts:
            raise ToolError(f"{path!r} is inside git's own files (.git), which the tools never touch")
        return real

    def show(self, real: Path) -> str:
        """A resolved path as the model should name it: relative to the root."""
        rel = real.relative_to(self.root).as_posix()
        return rel if rel != "." else "."


def _text_arg(args: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = args.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ToolError(f"`{key}` must be a string")
    return value


def _int_arg(args: dict[str, Any], key: str, default: int | None) -> int | None:
    value = args.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ToolError(f"`{key}` must be a whole number of at least 0")
    return value


def _is_binary(head: bytes) -> bool:
    return b"\0" in head


def _human(size: int) -> str:
    return f"{size / 1024:.0f} KB" if size < 1024 * 1024 else f"{size / (1024 * 1024):.1f} MB"


# --- list -----------------------------------------------------------------------------------------

def list_dir(ws: Workspace, args: dict[str, Any]) -> str:
    """Entries of a directory (`name/` for directories, sizes for files), optionally recursive."""
    top = ws.resolve(args.get("path") or ".")
    if not top.is_dir():
        raise ToolError(f"{ws.show(top)!r} is not a directory")
    recursive = bool(args.get("recursive", False))
    lines: list[str] = []
    more = 0
    for entry in _walk(top, recursive):
        if len(lines) >= LIST_LIMIT:
            more += 1
            continue
        rel = entry.relative_to(top).as_posix()
        if entry.is_symlink():
            lines.append(f"{rel}@ -> {os.readlink(entry)}")
        elif entry.is_dir():
            lines.append(f"{rel}/")
        else:
            lines.append(f"{rel}  ({entry.stat().st_size} bytes)")
    if more:
        lines.append(f"... {more} more entries not shown: list a subdirectory")
    return "\n".join(lines) if lines else "(empty directory)"


def _walk(top: Path, recursive: bool) -> Iterator[Path]:
    """Entries under TOP in name order, depth first, never entering .git or following a symbolic
    link. Iterative: a folder nested thousands deep is walked, not a RecursionError."""
    stack: list[Iterator[os.DirEntry[str]]] = [iter(_entries(top))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name == ".git":
            continue
        yield Path(entry.path)
        if recursive and entry.is_dir(follow_symlinks=False):
            stack.append(iter(_entries(Path(entry.path))))


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise ToolError(f"cannot list {folder.name!r}: {exc.strerror}") from None


# --- read -----------------------------------------------------------------------------------------

def read_file(ws: Workspace, args: dict[str, Any]) -> str:
    """A text file with numbered lines; OFFSET (1-based line) and LIMIT (lines) read a part."""
    path = ws.resolve(args.get("path"))
    offset = _int_arg(args, "offset", None)
    limit = _int_arg(args, "limit", None)
    if not path.is_file():
        raise ToolError(f"{ws.show(path)!r} is not a file" + ("" if path.exists() else " (it does not exist)"))
    size = path.stat().st_size
    if offset is None and limit is None and size > READ_LIMIT:
        raise ToolError(f"{ws.show(path)!r} is {_human(size)}, over the {_human(READ_LIMIT)} read limit: "
                        "read it in parts with `offset` and `limit`, or find what you need with search")
    with open(path, "rb") as f:
        if _is_binary(f.read(8192)):
            raise ToolError(f"{ws.show(path)!r} is a binary file; the tools read text only")
        f.seek(0)
        return _numbered(f, first=max(offset or 1, 1), count=limit or PAGE_LINES)


def _numbered(f: Any, *, first: int, count: int) -> str:
    out: list[str] = []
    used = 0
    number = 0
    while True:
        raw = f.readline(LINE_LIMIT * 4)
        if not raw:
            break
        number += 1
        if number < first:
            continue
        if number >= first + count:
            out.append(f"[the file goes on: read on with offset={number}]")
            break
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if len(line) > LINE_LIMIT:
            line = line[:LINE_LIMIT] + " [line cut]"
        used += len(line) + 8
        if used > READ_LIMIT:
            out.append(f"[output stops at line {number - 1}: read on with offset={number}]")
            break
        out.append(f"{number:6d}\t{line}")
    if not out:
        return "(empty file)" if number == 0 else f"(the file has {number} lines; none from line {first})"
    return "\n".join(out)


# --- write and edit ---------------------------------------------------------------------------------

def write_file(ws: Workspace, args: dict[str, Any]) -> str:
    """Create or overwrite a file with CONTENT; missing parent directories are created."""
    path = ws.resolve(args.get("path"))
    content = _text_arg(args, "content")
    data = content.encode("utf-8")
    if len(data) > WRITE_LIMIT:
        raise ToolError(f"content of {_human(len(data))} is over the {_human(WRITE_LIMIT)} write limit")
    if path.is_dir():
        raise ToolError(f"{ws.show(path)!r} is a directory")
    existed = path.exists()
    _replace(path, data)
    return f"{'overwrote' if existed else 'created'} {ws.show(path)} ({len(data)} bytes)"


def edit_file(ws: Workspace, args: dict[str, Any]) -> str:
    """Replace OLD_STRING with NEW_STRING: exactly one occurrence, or all with REPLACE_ALL."""
    path = ws.resolve(args.get("path"))
    old = _text_arg(args, "old_string")
    new = _text_arg(args, "new_string")
    replace_all = bool(args.get("replace_all", False))
    if not old:
        raise ToolError("`old_string` is empty: use write to create a file")
    if old == new:
        raise ToolError("`old_string` and `new_string` are the same: nothing would change")
    if not path.is_file():
        raise ToolError(f"{ws.show(path)!r} is not a file" + ("" if path.exists() else " (it does not exist)"))
    size = path.stat().st_size
    if size > WRITE_LIMIT:
        raise ToolError(f"{ws.show(path)!r} is {_human(size)}, over the {_human(WRITE_LIMIT)} edit limit")
    raw = path.read_bytes()
    if _is_binary(raw[:8192]):
        raise ToolError(f"{ws.show(path)!r} is a binary file; the tools edit text only")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{ws.show(path)!r} is not UTF-8 text; edit refuses to re-encode it") from None
    found = text.count(old)
    if found == 0:
        raise ToolError(f"`old_string` does not occur in {ws.show(path)}: it must match the file exactly, "
                        "whitespace included (read the file again)")
    if found > 1 and not replace_all:
        raise ToolError(f"`old_string` occurs {found} times in {ws.show(path)}: include more context to make "
                        "it unique, or set replace_all")
    data = text.replace(old, new).encode("utf-8")
    if len(data) > WRITE_LIMIT:
        raise ToolError(f"the edited file would be {_human(len(data))}, over the {_human(WRITE_LIMIT)} limit")
    _replace(path, data)
    return f"replaced {found if replace_all else 1} occurrence{'s' if replace_all and found > 1 else ''} " \
           f"in {ws.show(path)}"


def _replace(path: Path, data: bytes) -> None:
    """Write through a new file renamed over PATH: a hard link to a file outside the worktree, or a
    link swapped in after the check, is replaced, never written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".wswarm-write-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- search ---------------------------------------------------------------------------------------

def search(ws: Workspace, args: dict[str, Any]) -> str:
    """Lines matching a Python regular expression, as `path:line: text`, under PATH (default: all).

    A pattern that backtracks without end is stopped once the search has spent SEARCH_SECONDS
    matching: a ToolError, never a frozen run.
    """
    pattern = _text_arg(args, "pattern")
    glob = _text_arg(args, "glob", required=False)
    compiled = _compile(pattern, ignore_case=bool(args.get("ignore_case")))
    top = ws.resolve(args.get("path") or ".")
    files = [top] if top.is_file() else (p for p in _walk(top, True) if p.is_file() and not p.is_symlink())
    hits: list[str] = []
    more = skipped = 0
    spent = 0.0
    for count, path in enumerate(files):
        if count >= SEARCH_FILES:
            hits.append(f"(stopped after {SEARCH_FILES} files: search a subdirectory, or narrow with glob)")
            break
        rel = ws.show(path)
        if glob and not (fnmatch.fnmatch(rel, glob) or fnmatch.fnmatch(path.name, glob)):
            continue
        if path.stat().st_size > SEARCH_FILE_LIMIT:
            skipped += 1
            continue
        data = path.read_bytes()
        if _is_binary(data[:8192]):
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            # `regex` lets go of the GIL while it matches a str and gives up at the timeout; `re`
            # holds the GIL until it is done, which for (a|a)+$ on a long line is never. A timeout
            # of 0 or less is none at all to `regex`: a spent budget is checked here.
            started = time.monotonic()
            try:
                if spent >= SEARCH_SECONDS:
                    raise TimeoutError
                found = compiled.search(line, timeout=SEARCH_SECONDS - spent)
            except TimeoutError:
                raise ToolError(f"the search was stopped after {SEARCH_SECONDS:g} s of matching, at {rel}:{number}: "
                                "the pattern backtracks too much (nested repeats such as (a+)+ or (a|a)*); "
                                "simplify it, or narrow the path or glob") from None
            spent += time.monotonic() - started
            if found:
                if len(hits) >= SEARCH_LIMIT:
                    more += 1
                else:
                    hits.append(f"{rel}:{number}: {line[:300]}")
    if more:
        hits.append(f"... {more} more matches not shown: narrow the pattern, path or glob")
    if skipped:
        hits.append(f"({skipped} files over {_human(SEARCH_FILE_LIMIT)} were not searched)")
    return "\n".join(hits) if hits else "no matches"


def _compile(pattern: str, *, ignore_case: bool) -> regex.Pattern[str]:
    """PATTERN compiled with Python's `re` syntax, refused when compiling it alone would take
    seconds and gigabytes."""
    if len(pattern) > PATTERN_LIMIT:
        raise ToolError(f"`pattern` is {len(pattern)} characters long, over the limit of {PATTERN_LIMIT}")
    if _pattern_size(pattern) > PATTERN_NODES:
        raise ToolError(f"`pattern` repeats too much: its counts {{n}} multiply to over {PATTERN_NODES:,} "
                        "pieces; use smaller counts, or + and *")
    try:
        return regex.compile(pattern, regex.V0 | (regex.IGNORECASE if ignore_case else 0))
    except regex.error as exc:
        raise ToolError(f"`pattern` is not a valid regular expression: {exc}") from None


_COUNT = re.compile(r"\{(\d*)(?:,\d*)?\}")


def _pattern_size(pattern: str) -> int:
    """About how many nodes PATTERN compiles to: `regex` writes a fixed count out, so
    (?:a{65535}){65535} is four billion of them (measured: 0.07 s for a{100000}, a MemoryError
    after seconds for that one). An upper bound: classes and comments count as characters."""
    sizes = [0]   # the size of each open group so far
    last = 0      # the size of what a count after this point repeats
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "(":
            sizes.append(0)
            last = 0
        elif char == ")" and len(sizes) > 1:
            last = max(sizes.pop(), 1)
            sizes[-1] += last
        elif char == "{" and (count := _COUNT.match(pattern, i)):
            digits = count.group(1)
            times = max(int(digits) if len(digits) <= 9 else 10**9, 1)
            sizes[-1] += last * (times - 1)
            last *= times
            i = count.end()
            continue
        elif char not in "*+?|":
            last = 1
            sizes[-1] += 1
            i += 2 if char == "\\" else 1
            continue
        i += 1
    return sum(sizes)
