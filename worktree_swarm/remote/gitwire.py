"""Git as the transport for code: what the integrator and a worker push and fetch (the few objects
that travel inside a request or an outcome instead are inline.py's).

Everything on the remote goes under the run's private namespace (`refs/wswarm/<run>/…`, never
`refs/heads`). A start commit whose objects fit in its request, and a task branch whose objects fit
in its outcome, travel there; the others through the remote: the integrator pushes a start commit
once, a worker fetches exactly that ref and pushes its task branch, and the integrator fetches that
one ref into the task's local branch.
"""

from __future__ import annotations

import time
from pathlib import Path

from worktree_swarm.git.repo import Repo
from worktree_swarm.remote.inline import PACK_FROM_USER, apply_objects, has_commit, whole_above
from worktree_swarm.remote.protocol import run_refs, start_ref, task_ref
from worktree_swarm.util import proc
from worktree_swarm.util.errors import CommandError
from worktree_swarm.util.types import BranchName, Sha

QUIET = ("-q", "--no-verify")
# A fetch on the path of a dispatch or a merge does not also look for housekeeping to do (one more git
# process each time): a worker runs it between attempts (`maintain`), the integrator's repository is
# kept by the user's own git.
FETCH = ("fetch", "-q", "--no-tags", "--no-write-fetch-head", "--no-auto-maintenance")
# A start fetched is kept as a pack (not unpacked into loose objects, as git does below 100 objects): a
# pack appears whole, where loose objects appear one by one, a commit before its tree, to the look of
# another attempt of the same worker whose start is among them.
WHOLE = ("-c", "fetch.unpackLimit=1", "-c", "transfer.unpackLimit=1")
PACKS_MAX = 16          # a worker's packs past which `maintain` rolls the small ones up


def push_refs(repo: Repo, remote: str, updates: dict[str, Sha], deletions: list[str]) -> None:
    """One push: each ref of UPDATES set to its commit, each ref of DELETIONS removed (every one must
    exist there: git refuses to delete a ref the remote lacks). One git process for the lot, so a
    batch of start commits costs one round trip, not one each."""
    specs = [f"{sha}:{ref}" for ref, sha in updates.items()] + [f":{ref}" for ref in deletions]
    if specs:
        repo.git("push", *QUIET, remote, *specs)


def fetch_start(repo: Repo, remote: str, run: str, sha: Sha, *, wait_s: float = 0.0) -> bool:
    """Fetch the start commit of an attempt into the ref of the same name here (kept, so the next
    fetch names it as a commit this clone has and only the objects since travel); while the remote
    does not have it, again for up to WAIT_S seconds (a request that carried its start's objects may
    arrive before the push of that start), then CommandError. False when it was here already."""
    if has_commit(repo, sha):
        return False
    ref = start_ref(run, sha)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            repo.git(*WHOLE, *FETCH, remote, f"+{ref}:{ref}")
            break
        except CommandError:
            if has_commit(repo, sha):       # a local ref locked by another fetch of the same commit
                return True
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
    if repo.ref_sha(ref) != sha:
        raise CommandError(["git", "fetch", remote, ref], 1, f"the remote's {ref} is not commit {sha}")
    return True


def keep_ref(repo: Repo, ref: str, sha: str) -> None:
    """REF at commit SHA here (in process, no git process): a name the next fetch negotiates with."""
    repo.pygit.references.create(ref, sha, force=True)


def maintain(repo: Repo) -> None:
    """git's own housekeeping when it is due (packing loose objects, as a fetch would have asked for),
    and past PACKS_MAX packs (`apply_objects` writes one a request) the small ones rolled into bigger:
    each size at least twice the one below, so a roll-up rewrites only the small (121 packs: 37 ms here)."""
    repo.git("maintenance", "run", "--auto", "--quiet")
    if sum(1 for _ in (repo.common_dir / "objects" / "pack").glob("*.pack")) > PACKS_MAX:
        repo.git("repack", "-d", "-q", "--geometric=2")


def forget_refs(repo: Repo, refs: list[str]) -> None:
    """Delete local REFS (start commits fetched earlier, no longer worth naming), in process."""
    import pygit2

    for ref in refs:
        try:
            repo.pygit.references.delete(ref)
        except KeyError:
            pass            # gone already
        except (ValueError, OSError, pygit2.GitError) as exc:
            raise CommandError(["git", "update-ref", "-d", ref], 1, str(exc)) from exc


def push_task(repo: Repo, remote: str, run: str, task_id: str, n: int, branch: BranchName) -> None:
    """Push attempt N's branch to its ref on the remote (a retried push of the same attempt replaces it)."""
    repo.git("push", *QUIET, "--force", remote, f"refs/heads/{branch}:{task_ref(run, task_id, n)}")


def fetch_task(repo: Repo, remote: str, run: str, task_id: str, n: int, branch: BranchName, head: Sha) -> None:
    """Fetch attempt N's branch into local BRANCH; CommandError unless it arrives at HEAD, the commit
    the worker reported (a ref moved meanwhile is not what was gated)."""
    repo.git(*FETCH, remote, f"+{task_ref(run, task_id, n)}:refs/heads/{branch}")
    got = repo.branch_sha(branch)
    if got != head:
        raise CommandError(["git", "fetch", remote, task_ref(run, task_id, n)], 1,
                           f"the remote's branch of attempt {n} is at {got}, not at the gated commit {head}")


def fetch_tasks(repo: Repo, remote: str, run: str, attempts: list[tuple[str, int, BranchName, Sha]]) -> list[str | None]:
    """`fetch_task` for each (task, n, branch, head) of ATTEMPTS, in one fetch while every ref is there
    (one git fetch per batch of outcomes, not per outcome); for each, None or why it failed."""
    if len(attempts) > 1:
        specs = [f"+{task_ref(run, task_id, n)}:refs/heads/{branch}" for task_id, n, branch, _ in attempts]
        try:
            repo.git(*FETCH, remote, *specs)
        except CommandError:
            pass        # one ref missing fails them all: each is fetched alone below, to say which
        else:
            return [None if repo.branch_sha(branch) == head else
                    f"the remote's branch of attempt {n} is at {repo.branch_sha(branch)}, not at the gated commit {head}"
                    for _, n, branch, head in attempts]
    errors: list[str | None] = []
    for task_id, n, branch, head in attempts:
        try:
            fetch_task(repo, remote, run, task_id, n, branch, head)
            errors.append(None)
        except CommandError as exc:
            # Fetched before and its remote ref deleted since (an integrator that died between the
            # two, now resumed): the branch is here at the gated commit, which is all that counts.
            errors.append(None if repo.branch_sha(branch) == head else str(exc).splitlines()[0])
    return errors


def write_branches(repo: Repo, branches: list[tuple[BranchName, Sha, Sha, str]]) -> list[str | None]:
    """For each (branch, head, start, payload) of BRANCHES, the objects of an outcome's PAYLOAD written
    here (`apply_objects`, each checked against its id) and local BRANCH set to HEAD, when with them
    HEAD's whole history and tree are here above START (whole here: this repository made it); for each,
    None or why not."""
    applied = [apply_objects(repo, head, payload, pack_from=PACK_FROM_USER) for _, head, _, payload in branches]
    errors: list[str | None] = [None if objects is not None else f"its objects do not make commit {head}"
                                for (_, head, _, _), objects in zip(branches, applied)]
    # A task's few commits whose carried objects show them whole need no git process (~4 ms of CPU an
    # outcome, on the way to its merge); for the others, git's own check of what is here now (modes,
    # kinds, every tree read as git reads it), all at once.
    unsure = [i for i, ((_, head, start, _), objects) in enumerate(zip(branches, applied))
              if objects is not None and not whole_above(repo, objects, head, start)]
    if unsure and not complete(repo, [branches[i][1] for i in unsure], sorted({branches[i][2] for i in unsure})):
        for i in unsure:      # which: each alone (not a usual case)
            if not complete(repo, [branches[i][1]], [branches[i][2]]):
                errors[i] = f"objects of commit {branches[i][1]} are missing"
    for (branch, head, _, _), error in zip(branches, errors):
        if error is None:
            repo.update_ref(branch, head, repo.branch_sha(branch), reason="wswarm: an attempt's outcome")
    return errors


def complete(repo: Repo, heads: list[str], starts: list[str]) -> bool:
    """Whether every object of the HEADS' closures is here, given that the STARTS' closures are."""
    return repo.git("rev-list", "--objects", "--quiet", *heads, "--not", *starts, check=False).returncode == 0


def delete_run_refs(repo: Repo, remote: str, run: str) -> int:
    """Remove the run's refs from the remote once it is over; how many there were."""
    out = repo.git("ls-remote", "--refs", remote, run_refs(run) + "*").stdout
    refs = [line.split("\t", 1)[1] for line in out.splitlines() if "\t" in line]
    for at in range(0, len(refs), 200):
        repo.git("push", *QUIET, remote, *(":" + ref for ref in refs[at:at + 200]))
    return len(refs)


def roots(repo: Repo, commit: str = "HEAD") -> list[str]:
    """The root commits of COMMIT's history: what names the repository on every machine."""
    return repo.git("rev-list", "--max-parents=0", commit).stdout.split()


def clone(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc.git("clone", "-q", "--no-tags", url, dest, cwd=dest.parent)


def origin_url(path: Path) -> str | None:
    res = proc.git("remote", "get-url", "origin", cwd=path, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def fetch_all(path: Path) -> None:
    """Bring an existing clone up to date with its origin's branches."""
    proc.git("fetch", "-q", "--no-tags", "origin", cwd=path)
