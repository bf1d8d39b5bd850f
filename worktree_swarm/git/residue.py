"""What an agent can leave in its worktree that git does not commit, and that would otherwise act
outside its sandbox or fool the gate: repositories nested in the worktree (their own config and
attributes make git run code when wswarm's `git add` looks inside them), and untracked files left
out of the commit, which the gate would otherwise run against.
"""

from __future__ import annotations

import os
from pathlib import Path

from worktree_swarm.util import proc


def nested_repositories(root: Path, *, common_dir: Path) -> list[str]:
    """Paths (relative to ROOT) of every `.git` below ROOT except its own, never following a link.
    A submodule's `.git` file pointing into the common dir's modules folder is wswarm's own
    checkout of a submodule and is not listed."""
    found: list[str] = []
    modules = os.path.normpath(os.path.realpath(common_dir / "modules"))
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name == ".git":
                if folder == str(root):
                    continue
                if entry.is_file(follow_symlinks=False) and _points_into(entry.path, modules):
                    continue
                found.append(os.path.relpath(entry.path, root))
            elif entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return sorted(found)


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
