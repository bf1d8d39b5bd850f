"""What an agent can leave in its worktree that git does not commit, and that would otherwise act
outside its sandbox or fool the gate: repositories nested in the worktree (their own config and
attributes make git run code when wswarm's `git add` looks inside them), and untracked files left
out of the commit, which the gate would otherwise run against.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
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
    attributes: bool = False     # a `.gitattributes` anywhere: files may be converted on add and checkout


def scan(root: Path, *, common_dir: Path) -> Found:
    """One walk of ROOT, never following a link: the `.git` of every repository nested in it (a
    submodule's `.git` file pointing into the common dir's modules folder is wswarm's own checkout
    of a submodule and is not listed), and what looks generated, tracked or not. Folders are opened
    by their path from ROOT, as git reaches them: a folder git can list is listed here however long
    ROOT's own path makes its full one."""
    return _walk(root, common_dir, lambda fd, folder: _list(fd))


class Scanner:
    """`scan` for worktrees walked again and again (slots): a folder whose status (device, inode,
    ctime) is what it was when it was last listed is not listed again. Adding, removing or renaming
    an entry sets the folder's ctime to the time of the change, which no one but the clock can set
    back, so the same status means the same entries. A change in the clock tick the folder was
    listed in could leave its ctime as it was: a folder listed less than `settled_ns` (1 s) after its
    last change is listed again next time (git's rule for racily clean index entries). A `.git` file's
    content is read on every walk: it changes without its folder. At 5,000 files in 50 folders a
    walk that lists every folder costs ~4 ms; one that lists only what changed, a fraction of one."""

    def __init__(self, *, settled_ns: int = 1_000_000_000) -> None:
        self.settled_ns = settled_ns
        self.listed = 0          # folders the last walk listed (the others were vouched for by their status)
        self._seen: dict[str, dict[str, _Listing]] = {}     # root -> folder -> its last listing

    def scan(self, root: Path, *, common_dir: Path) -> Found:
        before: dict[str, _Listing] = self._seen.get(str(root), {})
        now: dict[str, _Listing] = {}
        self.listed = 0

        def listing(fd: int, folder: str) -> _Listing | None:
            old = before.get(folder)
            if old is not None and old.listed_ns - old.status[2] > self.settled_ns:
                try:
                    st = os.fstat(fd)
                except OSError:
                    return None
                if (st.st_dev, st.st_ino, st.st_ctime_ns) == old.status:
                    now[folder] = old
                    return old
            new = _list(fd)
            if new is not None:
                now[folder] = new
                self.listed += 1
            return new

        found = _walk(root, common_dir, listing)
        self._seen[str(root)] = now
        return found


@dataclass(frozen=True)
class _Listing:
    """What a walk needs of one folder's entries, and the folder's status when they were listed."""

    status: tuple[int, int, int]      # device, inode, ctime (ns), read before listing
    listed_ns: int                    # the clock when the listing was done
    folders: tuple[str, ...]          # its folders (not links), `.git` aside
    git: bool | None                  # a `.git` in it: True a regular file, False anything else, None none
    generated: tuple[str, ...]        # generated folders and files in it, by name
    attributes: bool                  # a `.gitattributes` in it


# A folder is opened as itself, never through a link or by blocking on a FIFO put in its place.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK


def _list(fd: int) -> _Listing | None:
    """The listing of the folder open as FD (its entries are looked at through it)."""
    try:
        st = os.fstat(fd)
        entries = list(os.scandir(fd))
    except OSError:
        return None
    listed_ns = time.time_ns()
    folders: list[str] = []
    generated: list[str] = []
    git: bool | None = None
    attributes = False
    for entry in entries:
        name = entry.name
        if name == ".gitattributes":
            attributes = True
        if name == ".git":
            git = entry.is_file(follow_symlinks=False)
        elif entry.is_dir(follow_symlinks=False):
            folders.append(name)
            if name in GENERATED_DIRS:
                generated.append(name)
        elif _generated_name(name):
            generated.append(name)
    return _Listing((st.st_dev, st.st_ino, st.st_ctime_ns), listed_ns, tuple(folders), git, tuple(generated),
                    attributes)


def _walk(root: Path, common_dir: Path, listing_of: Callable[[int, str], _Listing | None]) -> Found:
    nested: list[str] = []
    generated: list[str] = []
    attributes = False
    modules = os.path.normpath(os.path.realpath(common_dir / "modules"))
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return Found(nested=[], generated=[])      # no worktree left (the agent deleted it): nothing in it
    try:
        stack = [("", False)]      # (folder relative to ROOT, inside a generated folder)
        while stack:
            folder, inside = stack.pop()
            try:
                fd = os.open(folder or ".", _DIR_FLAGS, dir_fd=top)
            except OSError:
                continue
            try:
                listing = listing_of(fd, folder)
                if listing is None:
                    continue
                prefix = folder + "/" if folder else ""
                attributes = attributes or listing.attributes
                if listing.git is not None and folder:
                    if not (listing.git and _points_into(fd, os.path.join(root, folder), modules)):
                        nested.append(prefix + ".git")
                if not inside:
                    generated.extend(prefix + name for name in listing.generated)
                stack.extend((prefix + name, inside or name in GENERATED_DIRS) for name in listing.folders)
            finally:
                os.close(fd)
    finally:
        os.close(top)
    return Found(nested=sorted(nested), generated=sorted(generated), attributes=attributes)


def written_since(root: Path, since_ns: int) -> list[str]:
    """Paths (relative to ROOT) of the files and links below ROOT changed since SINCE_NS (their ctime,
    which no one but the clock can set back), `.git` entries aside; never following a link."""
    out: list[str] = []
    for folder, dirs, files, fd in os.fwalk(root, follow_symlinks=False):
        dirs[:] = [d for d in dirs if d != ".git"]
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel + "/"
        for name in files:
            if name == ".git":
                continue
            try:
                if os.stat(name, dir_fd=fd, follow_symlinks=False).st_ctime_ns >= since_ns:
                    out.append(prefix + name)
            except OSError:
                continue
    return sorted(out)


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
    if not relative:
        return
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
