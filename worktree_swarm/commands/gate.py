"""`wswarm gate`: the gate on a ref (in a temporary worktree), on the index, or on the working tree."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pygit2

from worktree_swarm.util import proc
from worktree_swarm.config import CONFIG_FILES, Config, config_from, load_config
from worktree_swarm.util.errors import UsageError
from worktree_swarm.gate.report import CheckResult, GateReport, tail
from worktree_swarm.gate.detect import with_detected_checks
from worktree_swarm.gate.runner import run_gate_on_diff, run_setup, tree_blob_size
from worktree_swarm.git.diff import changed_files, diff_text
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.worktrees import add_worktree, remove_worktree
from worktree_swarm.sandbox import Confinement
from worktree_swarm.util.types import Sha

# Where `git merge`/`git pull` users keep their mainline, in the order a default base looks for it.
_MAINLINES = ("refs/remotes/origin/HEAD", "refs/heads/main", "refs/heads/master")


@dataclass(frozen=True)
class Base:
    sha: Sha | None            # None: the empty tree (the judged commit has no parent)
    description: str           # how it was chosen, for the report's first line


@dataclass(frozen=True)
class GateOutcome:
    report: GateReport
    subject: str               # what was judged: "feature (1a2b3c4)", "the index", "the working tree"
    base: Base
    detected: str | None = None   # the line announcing auto-detected checks, when none are configured
    config_from: str = "the checkout"   # where the gate's own configuration was read

    @property
    def headline(self) -> str:
        """The report's first line: what was judged against which base, configured from where."""
        return f"wswarm gate: {self.subject} against {self.base.description}; configuration from {self.config_from}"


def gate(*, cwd: Path, ref: str | None = None, staged: bool = False, base: str | None = None,
         index_file: Path | None = None) -> GateOutcome:
    """Run the configured and built-in checks on REF, on the index (STAGED), or on the working tree.

    A ref is checked out in a temporary detached worktree under the git common dir, removed
    afterwards; the index and the working tree are judged in the checkout itself, and neither the
    user's index nor their files are written. INDEX_FILE (git's GIT_INDEX_FILE inside a hook)
    replaces the checkout's index for --staged. Raises UsageError for bad input.
    """
    if ref is not None and staged:
        raise UsageError("--ref and --staged judge different things: pass one of them",
                         hint="--ref REF judges a commit, --staged the index, neither the working tree")
    repo = Repo.discover(cwd)
    head = _commit(repo, ref, "--ref") if ref is not None else repo.resolve_commit("HEAD")
    chosen = _chosen_base(repo, base, head, ref)
    if ref is None and not staged:
        own, config_from = load_config(repo.root), "the checkout"       # your own working tree
    else:
        index = (index_file or _index_path(repo)) if staged else None
        own, config_from = _trusted_config(repo, chosen, index)
    config, detected = with_detected_checks(own, repo.root)
    scratch_root = repo.state_dir / "gate"
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="gate-", dir=scratch_root))
    try:
        if ref is not None:
            report = _gate_commit(repo, config, chosen, head, scratch)
            return GateOutcome(report, f"{ref} ({head[:7]})", chosen, detected, config_from)
        if staged:
            index = index_file or _index_path(repo)
            if not index.is_file():
                raise UsageError(f"there is no index file at {index}",
                                 hint="GIT_INDEX_FILE names a missing file: unset it, or judge the working tree")
            _refuse_unmerged(repo, index)
            return GateOutcome(_gate_index(repo, config, chosen, head, index, scratch), "the index", chosen, detected,
                               config_from)
        index = _working_tree_index(repo, scratch)
        report = _gate_index(repo, config, chosen, head, index, scratch)
        return GateOutcome(report, "the working tree (untracked files included)", chosen, detected)
    finally:
        # The temporary worktree is already unregistered; logs are in the report's tails.
        shutil.rmtree(scratch, ignore_errors=True)


def _trusted_config(repo: Repo, base: Base, index: Path | None) -> tuple[Config, str]:
    """The gate's configuration as the side being merged into has it, never as the change under
    judgement does: each config file from the base commit, or, when the checkout holds one that
    git does not track (neither HEAD nor INDEX has it), that local file of the user's."""
    tracked = {name for name in CONFIG_FILES if _in_tree(repo, "HEAD", name)}
    if index is not None and index.is_file():
        listed = _git_with_index(repo, index, "ls-files", "-z", "--", *CONFIG_FILES).stdout
        tracked.update(name for name in listed.split("\0") if name)
    local = {name for name in CONFIG_FILES if name not in tracked and (repo.root / name).is_file()}

    def read(name: str) -> bytes | None:
        if name in local:
            return (repo.root / name).read_bytes()
        return _blob(repo, base.sha, name) if base.sha is not None else None

    def where(name: str) -> Path:
        return repo.root / name if name in local else Path(f"{(base.sha or 'empty')[:7]}:{name}")

    config = config_from(read, where=where)
    if config.source is None:
        return config, "defaults (the base has no wswarm configuration)"
    if config.source.name in local:
        return config, f"{config.source.name} in the checkout (untracked)"
    return config, f"the base's {config.source.name.split(':', 1)[-1]}"


def _in_tree(repo: Repo, rev: str, name: str) -> bool:
    sha = repo.ref_sha(rev)
    return sha is not None and _blob(repo, sha, name) is not None


def _blob(repo: Repo, commit: str, name: str) -> bytes | None:
    try:
        obj = repo.pygit[commit].peel(pygit2.Commit).tree[name]
    except KeyError:
        return None
    return obj.data if isinstance(obj, pygit2.Blob) else None


def _confinement(config: Config) -> Confinement:
    """Checks of a change run without the credentials in our environment (but [gate] pass_env)."""
    return Confinement(pass_env=config.gate.pass_env)


def _commit(repo: Repo, rev: str, flag: str) -> Sha:
    sha = repo.ref_sha(rev)
    if sha is None:
        raise UsageError(f"{flag} {rev!r} does not name a commit in {repo.root}",
                         hint="pass a branch, tag or commit id that exists (git rev-parse --verify REV)")
    return sha


def _chosen_base(repo: Repo, base: str | None, head: Sha, ref: str | None) -> Base:
    """--base if given (its merge-base with the judged commit when it is not an ancestor);
    else HEAD for the index and the working tree; else what REF adds over the mainline."""
    judged = ref if ref is not None else "HEAD"
    if base is not None:
        sha = _commit(repo, base, "--base")
        if repo.is_ancestor(sha, head):
            return Base(sha, f"{base} ({sha[:7]})")
        fork = _merge_base(repo, sha, head)
        if fork is None:
            raise UsageError(f"--base {base!r} shares no history with {judged}",
                             hint="pass a base that the judged commit grew from")
        return Base(fork, f"{fork[:7]}, the merge-base of {base} and {judged}")
    if ref is None:
        return Base(head, f"HEAD ({head[:7]}; the default for the index and the working tree)")
    mainline = _mainline(repo)
    if mainline is not None:
        name, tip = mainline
        fork = _merge_base(repo, tip, head)
        if fork is not None and fork != head:
            return Base(fork, f"{fork[:7]}, the merge-base of {name} and {ref} (the default; --base to change)")
        why = f"{ref} is already on {name}"
    else:
        why = "no origin/HEAD, main or master to compare with"
    parents = repo.pygit[head].peel(pygit2.Commit).parent_ids
    if not parents:
        return Base(None, f"the empty tree (the default: {why}, and {ref} has no parent)")
    parent = Sha(str(parents[0]))
    return Base(parent, f"{ref}~1 ({parent[:7]}; the default: {why}; --base to change)")


def _mainline(repo: Repo) -> tuple[str, Sha] | None:
    for name in _MAINLINES:
        try:
            ref = repo.pygit.references.get(name)
        except (ValueError, pygit2.GitError):
            continue
        if ref is None:
            continue
        try:
            target = ref.resolve()
        except (KeyError, pygit2.GitError):  # origin/HEAD pointing at a branch that is gone
            continue
        sha = repo.ref_sha(target.name)
        if sha is not None:
            return str(target.shorthand), sha
    return None


def _merge_base(repo: Repo, a: Sha, b: Sha) -> Sha | None:
    oid = repo.pygit.merge_base(a, b)
    return Sha(str(oid)) if oid is not None else None


def _empty_tree(repo: Repo) -> Sha:
    # Asked of git rather than hard-coded: SHA-256 repositories have another empty tree id.
    return Sha(repo.git("hash-object", "-t", "tree", "/dev/null").stdout.strip())


# --- a commit, in a temporary worktree ---------------------------------------------------------

def _gate_commit(repo: Repo, config: Config, base: Base, head: Sha, scratch: Path) -> GateReport:
    worktree = scratch / "worktree"
    old = base.sha if base.sha is not None else _empty_tree(repo)
    add_worktree(repo, worktree, head)
    try:
        setup_failed = _setup(config, worktree, scratch)
        gate_config = replace(config.gate, checks=()) if setup_failed else config.gate
        report = run_gate_on_diff(
            repo=repo, worktree=worktree, diff=diff_text(repo, old, head) if gate_config.builtin else "",
            blob_size=tree_blob_size(repo, head), history=(base.sha, head),
            changed=[c.path for c in changed_files(repo, old, head)], config=gate_config,
            declared_files=(), env={}, log_dir=scratch / "logs", confinement=_confinement(config))
    finally:
        remove_worktree(repo, worktree)
    if setup_failed is None:
        return report
    skipped = tuple(CheckResult(c.name, c.kind, "not-run", 0.0, note="the worktree setup step failed")
                    for c in config.gate.checks)
    return GateReport(report.results + (setup_failed,) + skipped)


def _setup(config: Config, worktree: Path, scratch: Path) -> CheckResult | None:
    """Run `[worktree] setup` in a fresh worktree, as the swarm does; its failure as a result."""
    if not config.worktree.setup:
        return None
    log = scratch / "setup.log"
    res = run_setup(config.worktree.setup, worktree=worktree, env={}, log=log, timeout=config.agents.timeout,
                    confinement=_confinement(config))
    if res.returncode == 0:
        return None
    note = f"timed out after {config.agents.timeout:g}s" if res.timed_out else f"exit {res.returncode}"
    return CheckResult("worktree-setup", "setup", "fail", res.seconds,
                       tail(log.read_text(encoding="utf-8", errors="replace")), note=note)


# --- the index, or the working tree through a throwaway index ----------------------------------

def _index_path(repo: Repo) -> Path:
    path = Path(repo.git("rev-parse", "--git-path", "index").stdout.strip())
    return path if path.is_absolute() else repo.root / path


def _refuse_unmerged(repo: Repo, index: Path) -> None:
    unmerged = _git_with_index(repo, index, "ls-files", "--unmerged", "-z").stdout
    if unmerged:
        paths = sorted({record.split("\t", 1)[1] for record in unmerged.split("\0") if "\t" in record})
        raise UsageError(f"the index has unresolved conflicts: {', '.join(paths)}",
                         hint="resolve them and `git add` the files, or run `wswarm gate` on the working tree")


def _working_tree_index(repo: Repo, scratch: Path) -> Path:
    """A copy of the checkout's index with every change and untracked file added: the working
    tree as the next `git add -A` would record it, leaving the user's index alone."""
    index = scratch / "judged-index"
    real = _index_path(repo)
    if real.exists():
        # A copy keeps skip-worktree (sparse checkout) and intent-to-add entries as the user has them.
        shutil.copyfile(real, index)
    else:
        _git_with_index(repo, index, "read-tree", "HEAD")
    _git_with_index(repo, index, "add", "--all", "--", ".")
    return index


def _gate_index(repo: Repo, config: Config, base: Base, head: Sha, index: Path, scratch: Path) -> GateReport:
    old = base.sha if base.sha is not None else _empty_tree(repo)
    # The index as a tree, written from a copy (write-tree may update the file it reads), so the
    # diff compares objects only: no .gitattributes of the judged change decides what it shows.
    copy = scratch / "judged-index"
    if index != copy:
        shutil.copyfile(index, copy)
    tree = _git_with_index(repo, copy, "write-tree").stdout.strip()
    diff = diff_text(repo, old, tree) if config.gate.builtin else ""
    names = [c.path for c in changed_files(repo, old, tree)]
    history = (base.sha, head) if base.sha != head else None

    def blob_size(path: str) -> int | None:
        res = _git_with_index(repo, copy, "cat-file", "-s", f":{path}", check=False)
        return int(res.stdout) if res.returncode == 0 else None

    return run_gate_on_diff(repo=repo, worktree=repo.root, diff=diff, blob_size=blob_size, history=history,
                            changed=names, config=config.gate, declared_files=(),
                            env={}, log_dir=scratch / "logs", confinement=_confinement(config))


def _git_with_index(repo: Repo, index: Path, *args: str | Path, check: bool = True) -> proc.Result:
    """git in the checkout, reading (and for add/read-tree writing) INDEX instead of its own index."""
    return proc.git(*args, cwd=repo.root, env={"GIT_INDEX_FILE": str(index)}, check=check)
