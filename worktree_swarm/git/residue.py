"""What an agent can leave in its worktree that git does not commit, and that would otherwise act
outside its sandbox or fool the gate: repositories nested in the worktree (their own config and
attributes make git run code when wswarm's `git add` looks inside them), and untracked files left
out of the commit, which the gate would otherwise run against.
"""

from __future__ import annotations

import os
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
    of a submodule and is not listed), and what looks generated, tracked or not."""
    nested: list[str] = []
    generated: list[str] = []
    modules = os.path.normpath(os.path.realpath(common_dir / "modules"))
    top = str(root)
    cut = len(top) + 1
    stack = [(top, False)]      # (folder, inside a generated folder)
    while stack:
        folder, inside = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name == ".git":
                if folder == top:
                    continue
                if entry.is_file(follow_symlinks=False) and _points_into(entry.path, modules):
                    continue
                nested.append(entry.path[cut:])
            elif entry.is_dir(follow_symlinks=False):
                if not inside and entry.name in GENERATED_DIRS:
                    generated.append(entry.path[cut:])
                    stack.append((entry.path, True))
                else:
                    stack.append((entry.path, inside))
            elif not inside and _generated_name(entry.name):
                generated.append(entry.path[cut:])
    return Found(nested=sorted(nested), generated=sorted(generated))


def _points_into(gitfile: str, folder: str) -> bool:
    """Whether the `.git` file points into FOLDER, read exactly as git reads it (bytes; only the
    line end stripped: `gitdir:  g` names " g"), with no link on the way."""
    try:
        with open(gitfile, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)) as f:
            raw = f.read(4096)
    except OSError:
        return False
    if not raw.startswith(b"gitdir: "):
        return False
    named = os.path.join(os.fsencode(os.path.dirname(gitfile)), raw[len(b"gitdir: "):].split(b"\n")[0].rstrip(b"\r"))
    plain = os.path.normpath(os.fsdecode(named))
    # Spelled into FOLDER and really there: a link in the worktree pointing into it does not count.
    return plain.startswith(folder + os.sep) and os.path.realpath(plain) == plain

def remove(root: Path, relative: list[str]) -> None:
    """Delete the entries at RELATIVE paths under ROOT (a link is removed, never followed)."""
    for rel in relative:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            proc.remove_tree(path)
        else:
            path.unlink(missing_ok=True)
