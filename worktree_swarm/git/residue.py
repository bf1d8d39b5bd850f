"""What an agent can leave in its worktree that git does not commit, and that would otherwise act
outside its sandbox or fool the gate: repositories nested in the worktree (their own config and
attributes make git run code when wswarm's `git add` looks inside them), and untracked files left
out of the commit, which the gate would otherwise run against.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.util import proc


# What tools leave in a checkout and no user commits: left out of the leftover commit when new.
GENERATED_DIRS = frozenset({"__pycache__", "node_modules", "htmlcov", ".pytest_cache", ".mypy_cache", ".ruff_cache"})
# Files by name: suffixes (bytecode, editor swap and backup files), whole names, prefixes (coverage
# data). Plain string tests: every name in a worktree passes them, ~5,000 at 5,000 files.
GENERATED_SUFFIXES = (".pyc", ".pyo", ".swp", ".swo", "~")
GENERATED_NAMES = frozenset({".DS_Store", ".coverage"})
GENERATED_PREFIXES = (".coverage.",)


def _generated_name(name: str) -> bool:
    return name.endswith(GENERATED_SUFFIXES) or name in GENERATED_NAMES or name.startswith(GENERATED_PREFIXES)


def generated_folder(path: str) -> int | None:
    """The index of PATH's first folder that is a generated one, or None."""
    return next((i for i, part in enumerate(path.split("/")[:-1]) if part in GENERATED_DIRS), None)


def is_generated(path: str) -> bool:
    """Whether the file at PATH is of a kind no one commits, by its name or a folder it is in."""
    return generated_folder(path) is not None or _generated_name(path.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class Found:
    """What one walk of a worktree found (paths relative to it, sorted)."""

    nested: list[str]       # every `.git` below the top but wswarm's own submodule checkouts
    generated: list[str]    # generated folders (the outermost) and generated files outside them


def scan(root: Path, *, common_dir: Path) -> Found:
    """One walk of ROOT, never following a link: the `.git` of every repository nested in it (a
    submodule's `.git` file pointing into the common dir's modules folder is wswarm's own checkout
    of a submodule and is not listed), and what looks generated, tracked or not. Folders are opened
    by their path from ROOT, as git reaches them: a folder git can list is listed here however long
    ROOT's own path makes its full one."""
    nested: list[str] = []
    generated: list[str] = []
    modules = os.path.normpath(os.path.realpath(common_dir / "modules"))
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stack = [("", False)]      # (folder relative to ROOT, inside a generated folder)
        while stack:
            folder, inside = stack.pop()
            try:
                fd = os.open(folder or ".", _DIR_FLAGS, dir_fd=top)
            except OSError:
                continue
            try:
                _scan_folder(fd, folder, inside, stack, nested, generated, root=root, modules=modules)
            finally:
                os.close(fd)
    finally:
        os.close(top)
    return Found(nested=sorted(nested), generated=sorted(generated))


# A folder is opened as itself, never through a link or by blocking on a FIFO put in its place.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK


def _scan_folder(fd: int, folder: str, inside: bool, stack: list[tuple[str, bool]], nested: list[str],
                 generated: list[str], *, root: Path, modules: str) -> None:
    """One folder of `scan`, open as FD (its entries are looked at through it)."""
    try:
        entries = list(os.scandir(fd))
    except OSError:
        return
    for entry in entries:
        path = f"{folder}/{entry.name}" if folder else entry.name
        if entry.name == ".git":
            if not folder:
                continue
            if entry.is_file(follow_symlinks=False) and _points_into(fd, os.path.join(root, folder), modules):
                continue
            nested.append(path)
        elif entry.is_dir(follow_symlinks=False):
            if not inside and entry.name in GENERATED_DIRS:
                generated.append(path)
                stack.append((path, True))
            else:
                stack.append((path, inside))
        elif not inside and _generated_name(entry.name):
            generated.append(path)


def _points_into(folder_fd: int, folder: str, modules: str) -> bool:
    """Whether the `.git` file in FOLDER (open as FOLDER_FD) points into MODULES, read exactly as git
    reads it (bytes; only the line end stripped: `gitdir:  g` names " g"), with no link on the way."""
    try:
        fd = os.open(".git", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
    except OSError:
        return False
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return False
    finally:
        os.close(fd)
    if not raw.startswith(b"gitdir: "):
        return False
    named = os.path.join(os.fsencode(folder), raw[len(b"gitdir: "):].split(b"\n")[0].rstrip(b"\r"))
    plain = os.path.normpath(os.fsdecode(named))
    # Spelled into MODULES and really there: a link in the worktree pointing into it does not count.
    return plain.startswith(modules + os.sep) and os.path.realpath(plain) == plain


def remove(root: Path, relative: list[str]) -> None:
    """Delete the entries at RELATIVE paths under ROOT (a link is removed, never followed), each
    reached by its path from ROOT, as `scan` and git reach it."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for rel in relative:
            try:
                mode = os.stat(rel, dir_fd=top, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(mode):
                # rm walks the folder itself, however deep (a recursion here would not).
                proc.run("rm", "-rf", "--one-file-system", "--", rel, cwd=root, check=False)
            else:
                os.unlink(rel, dir_fd=top)
    finally:
        os.close(top)
