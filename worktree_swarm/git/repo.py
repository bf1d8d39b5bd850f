"""A repository: where it lives, reading refs with pygit2, writing them with compare-and-swap."""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from worktree_swarm.util import proc
from worktree_swarm.util.errors import CommandError, NotARepositoryError, RefMovedError, UsageError
from worktree_swarm.util.types import Sha

if TYPE_CHECKING:
    import pygit2

ZERO_SHA = Sha("0" * 40)
# `git merge-tree --write-tree`, the merge train's in-memory merge, arrived in git 2.38.
MIN_GIT = (2, 38)


def git_version(text: str) -> tuple[int, ...]:
    """(2, 39, 5) from `git version 2.39.5` (vendor suffixes such as `.windows.1` ignored)."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return ()
    return tuple(int(part) for part in match.groups() if part is not None)


@dataclass(frozen=True)
class Ident:
    """Who a commit is by, as `git var GIT_AUTHOR_IDENT` / `GIT_COMMITTER_IDENT` say."""

    name: str
    email: str
    fixed: tuple[int, int] | None   # (seconds, minutes east of UTC) set by GIT_*_DATE; None: now

    @classmethod
    def parse(cls, text: str, *, fixed: bool) -> Ident | None:
        """`Name <email> 1700000000 +0100`; None when it does not read so."""
        match = re.fullmatch(r"(.+) <([^<>]*)> (\d+) ([+-])(\d\d)(\d\d)", text.strip())
        if match is None:
            return None
        name, email, seconds, sign, hours, minutes = match.groups()
        offset = (int(hours) * 60 + int(minutes)) * (-1 if sign == "-" else 1)
        return cls(name, email, (int(seconds), offset) if fixed else None)

    def signature(self) -> pygit2.Signature:
        import pygit2

        if self.fixed is not None:
            return pygit2.Signature(self.name, self.email, *self.fixed)
        now = int(time.time())
        return pygit2.Signature(self.name, self.email, now, (time.localtime(now).tm_gmtoff or 0) // 60)


def require_git(cwd: Path) -> None:
    """Refuse, before anything is created, a git too old for in-memory merges."""
    text = proc.git("--version", cwd=cwd, as_configured=True).stdout.strip()
    if git_version(text) < MIN_GIT:
        raise UsageError(f"wswarm needs git {'.'.join(map(str, MIN_GIT))} or newer for in-memory merges "
                         f"(found {text or 'an unknown version'})",
                         hint="upgrade git; the merge train uses `git merge-tree --write-tree`")


class Repo:
    """A non-bare repository with at least one commit, seen from one of its checkouts."""

    def __init__(self, *, root: Path, common_dir: Path) -> None:
        self.root = root
        self.common_dir = common_dir
        # pygit2 objects must not be shared between threads; each thread opens its own.
        self._local = threading.local()
        # `git worktree add/remove/prune` race each other on .git/worktrees (an add fails when a
        # remove deletes the emptied folder under it): every one of them holds this lock.
        self.worktree_admin = threading.RLock()

    @classmethod
    def discover(cls, cwd: Path) -> Repo:
        """Find the repository containing cwd; refuse bare repositories and empty ones."""
        # Asked on its own: in a bare repository --show-toplevel fails the whole call.
        res = proc.git("rev-parse", "--is-bare-repository", "--is-inside-work-tree", cwd=cwd, check=False)
        if res.returncode != 0:
            raise NotARepositoryError(f"{cwd} is not inside a git repository",
                                      hint="run wswarm from a checkout of the repository the agents should work on")
        if res.stdout.split() != ["false", "true"]:
            raise NotARepositoryError(f"{cwd} is a bare repository or inside a .git folder, not a checkout",
                                      hint="run wswarm from a checkout (a working tree) of the repository")
        root_s, common_s = proc.git("rev-parse", "--show-toplevel", "--git-common-dir", cwd=cwd).stdout.splitlines()
        root = Path(root_s)
        common = Path(common_s)
        if not common.is_absolute():
            common = (cwd / common).resolve()
        repo = cls(root=root, common_dir=common)
        # Asked of git, not pygit2: read-only commands such as `status` need no pygit2 at all.
        if proc.git("rev-parse", "--verify", "-q", "HEAD^{commit}", cwd=cwd, check=False).returncode != 0:
            raise NotARepositoryError(f"the repository at {root} has no commits yet",
                                      hint="commit something first: tasks start from a commit")
        return repo

    @property
    def pygit(self) -> pygit2.Repository:
        import pygit2   # here, not at the top: it costs read-only commands a third of their time

        repo = getattr(self._local, "repo", None)
        if repo is None:
            repo = pygit2.Repository(str(self.root))
            self._local.repo = repo
        return repo

    @property
    def state_dir(self) -> Path:
        """Everything wswarm writes lives here, never in the working tree."""
        return self.common_dir / "wswarm"

    def git(self, *args: str | Path, cwd: Path | None = None, check: bool = True,
            input: str | None = None) -> proc.Result:
        return proc.git(*args, cwd=cwd or self.root, check=check, input=input)

    def objects_only(self) -> tuple[str, ...]:
        """git options that read the repository as a bare one: no working tree, no index, so no
        .gitattributes of a checkout (an agent's `*.py -diff` would hide its lines from a diff)
        and no user-wide attributes file either. Only what commits and trees hold counts."""
        return ("--git-dir", str(self.common_dir), "-c", "core.bare=true", "-c", "core.attributesFile=/dev/null")

    def ref_sha(self, ref: str) -> Sha | None:
        """The commit a ref or revision points at, or None when it does not resolve."""
        import pygit2

        try:
            obj = self.pygit.revparse_single(ref)
        except (KeyError, ValueError, pygit2.GitError):
            return None
        commit = obj.peel(pygit2.Commit)
        return Sha(str(commit.id))

    def resolve_commit(self, ref: str) -> Sha:
        sha = self.ref_sha(ref)
        if sha is None:
            raise UsageError(f"'{ref}' does not name a commit in {self.root}",
                             hint="pass --base with a branch, tag or commit id that exists")
        return sha

    def branch_sha(self, branch: str) -> Sha | None:
        """The tip of refs/heads/BRANCH, read fresh (pygit2 does not cache refs)."""
        import pygit2

        try:
            # Not references.get(): pygit2 1.21 keeps every name that looks up (one string per call).
            ref = self.pygit.branches.local.get(branch)
        except (ValueError, pygit2.GitError):
            return None
        return Sha(str(ref.target)) if ref is not None else None

    def tree_of(self, commit: str) -> str:
        """The id of COMMIT's tree: what checks and no-op tests compare."""
        import pygit2

        return str(self.pygit[commit].peel(pygit2.Commit).tree_id)

    def tracked_files(self, commit: str) -> list[str]:
        """Every file path in COMMIT's tree."""
        return [p for p in self.git("ls-tree", "-r", "-z", "--name-only", commit).stdout.split("\0") if p]

    def current_branch(self) -> str | None:
        """The branch checked out where wswarm runs, or None on a detached HEAD."""
        if self.pygit.head_is_detached:
            return None
        return str(self.pygit.head.shorthand)

    def is_ancestor(self, ancestor: Sha, descendant: Sha) -> bool:
        if ancestor == descendant:
            return True
        return bool(self.pygit.descendant_of(descendant, ancestor))

    def is_dirty(self) -> bool:
        """Uncommitted changes to tracked files or untracked files in the user's checkout."""
        # --no-optional-locks: a status refresh would rewrite the user's index under index.lock.
        out = self.git("--no-optional-locks", "status", "--porcelain", "--untracked-files=normal").stdout
        return bool(out.strip())

    def check_identity(self) -> None:
        """Commits are made with the user's identity: make sure git has one."""
        res = self.git("var", "GIT_COMMITTER_IDENT", check=False)
        if res.returncode != 0:
            raise UsageError("git has no identity to commit with (user.name / user.email are not set)",
                             hint='run: git config --global user.name "Your Name" && '
                                  'git config --global user.email you@example.com')

    @functools.cached_property
    def _idents(self) -> tuple[Ident, Ident] | None:
        """The author and committer `git commit-tree` would use; None where git itself must commit:
        it has no identity (it says why) or a commit encoding other than UTF-8 is configured."""
        encoding = self.git("config", "--get", "i18n.commitEncoding", check=False).stdout.strip()
        if encoding and encoding.lower().replace("-", "") != "utf8":
            return None
        found = []
        for who in ("AUTHOR", "COMMITTER"):
            res = self.git("var", f"GIT_{who}_IDENT", check=False)
            ident = Ident.parse(res.stdout, fixed=bool(os.environ.get(f"GIT_{who}_DATE"))) if res.returncode == 0 else None
            if ident is None:
                return None
            found.append(ident)
        return found[0], found[1]

    def commit(self, tree: str, parents: Sequence[str], message: str) -> Sha:
        """A commit of TREE on PARENTS as `git commit-tree` makes it: the user's identity, the message
        byte for byte, no signing. Written in process (a commit-tree costs ~3 ms)."""
        import pygit2

        idents = self._idents
        if idents is None:
            args = [arg for parent in parents for arg in ("-p", parent)]
            return Sha(self.git("commit-tree", tree, *args, "-F", "-", input=message).stdout.strip())
        author, committer = idents
        try:
            # git drops a parent named twice ("duplicate parent … ignored"); so does this.
            oid = self.pygit.create_commit(None, author.signature(), committer.signature(), message,
                                           pygit2.Oid(hex=tree), [pygit2.Oid(hex=p) for p in dict.fromkeys(parents)])
        except (ValueError, OSError, pygit2.GitError) as exc:    # a missing object, a full disk: as git would fail
            raise CommandError(["git", "commit-tree", tree, *parents], 1, str(exc)) from exc
        return Sha(str(oid))

    def update_ref(self, branch: str, new: Sha, old: Sha | None, *, reason: str) -> None:
        """Move refs/heads/BRANCH from old (None: must not exist) to new, or raise RefMovedError."""
        import pygit2

        ref = f"refs/heads/{branch}"
        # In process (a `git update-ref` costs ~2.5 ms an update): libgit2 compares the value it
        # looked up with the ref's under the ref's lock, as update-ref does with an old value.
        try:
            if old is None:
                self.pygit.create_reference_direct(ref, pygit2.Oid(hex=new), False, message=reason)
                return
            found = self.pygit.branches.local.get(branch)
            if found is not None and str(found.target) == old:
                found.set_target(pygit2.Oid(hex=new), reason)
                return
        except (ValueError, OSError, pygit2.GitError) as exc:    # libgit2 says a held lock with OSError
            failed: Exception | None = exc
        else:
            failed = None
        now = self.branch_sha(branch)
        if failed is not None and now == old:     # not moved: the write itself failed (a disk full, a lock)
            raise CommandError(["git", "update-ref", ref, new, old or ZERO_SHA], 1, str(failed)) from failed
        raise RefMovedError(f"{ref} moved under wswarm (expected {old or 'nothing'}, found {now or 'nothing'})",
                            hint="another process changed the branch; nothing was overwritten")

    def delete_branch(self, branch: str) -> None:
        """Delete refs/heads/BRANCH if it is there, unless it moves meanwhile (in process, as `update_ref`)."""
        import pygit2

        try:
            found = self.pygit.branches.local.get(branch)
            if found is not None:
                # The reference's delete, not the branch's: that one reads every worktree's HEAD first
                # and refuses a branch checked out in one, which `update-ref -d` never did.
                pygit2.Reference.delete(found)
        except (ValueError, OSError, pygit2.GitError) as exc:
            raise CommandError(["git", "update-ref", "-d", f"refs/heads/{branch}"], 1, str(exc)) from exc

    def branches(self, prefix: str) -> list[str]:
        """Branch names under refs/heads/PREFIX."""
        out = self.git("for-each-ref", "--format=%(refname)", f"refs/heads/{prefix}").stdout
        return [line.removeprefix("refs/heads/") for line in out.splitlines() if line]
